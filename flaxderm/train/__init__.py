"""The training engine: config -> state -> compiled steps -> loop, on one or many devices/hosts.

* ``config``: ``default_config()`` (every option), validation, ``runlocal`` and
  ``--config.key=value`` overrides.
* ``setup``: from a config to the run's data facts (``RunInfo``), task, model and initial
  variables; shared by training and the run tools.
* ``state``: ``TrainState`` (params, batch_stats, opt_state, step, rng, ema_params).
* ``step``: ``Task`` and ``make_train_step`` / ``make_eval_step`` (segmentation and classification).
* ``scoring``: evaluation batches, summed metric statistics and per-case rows.
* ``optim``: optax optimisers and progress-based learning-rate schedules.
* ``parallel``: the device mesh ("auto": jit + NamedSharding; "pmap"), multi-host start-up.
* ``checkpoint``: orbax checkpoints (latest N + best), exact resume; ``lock``: one process per
  run directory.
* ``logs``: metrics.jsonl, TensorBoard and the progress bar; ``visualize``: the predictions grid.
* ``loop``: ``train(config, workdir, resume=...)``.

May import: ``flaxderm.models``, ``flaxderm.data``, ``flaxderm.losses``, ``flaxderm.metrics``;
never ``flaxderm.tools`` (the run tools build on the engine, not the other way round).
"""
