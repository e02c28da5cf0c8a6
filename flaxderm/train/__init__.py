"""The training engine: config -> state -> compiled steps -> loop, on one or many devices/hosts.

* ``config``: ``default_config()`` (every option), validation and ``--config.key=value`` overrides.
* ``state``: ``TrainState`` (params, batch_stats, opt_state, step, rng, ema_params).
* ``step``: ``Task`` and ``make_train_step`` / ``make_eval_step`` (segmentation and classification).
* ``optim``: optax optimisers and progress-based learning-rate schedules.
* ``parallel``: the device mesh ("auto": jit + NamedSharding; "pmap"), multi-host start-up.
* ``checkpoint``: orbax checkpoints (latest N + best), exact resume.
* ``loop``: ``train(config, workdir, resume=...)``.
"""
