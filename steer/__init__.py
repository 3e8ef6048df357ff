"""steer: reward-guided search (inference-time alignment, test-time scaling) for stock diffusers pipelines.

    import steer
    pipe = steer.wrap(StableDiffusionPipeline, method="smc", reward="clip").from_pretrained(path)
    out = pipe(["a photo of a cat"], num_particles=8, generator=torch.Generator().manual_seed(0))
    out.images, out.rewards, out.trace
"""

from .pipeline import SteeredPipeline, SteeredPipelineOutput, wrap

__version__ = "0.1.0"
__all__ = ["SteeredPipeline", "SteeredPipelineOutput", "wrap", "__version__"]
