"""flaxderm: JAX/Flax dermoscopy lesion segmentation and classification."""
__version__ = "0.1.0"
