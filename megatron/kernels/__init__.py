"""Our GPU kernels, apart from the model code that calls them: one file per kernel and architecture.

  interface.py                 FlashAttention's entry point: checks the inputs, chooses the kernels, autograd
  attention_triton.py          FlashAttention forward and split backward in Triton (any GPU, CPU interpreter)
  attention_gluon_fwd_sm90.py  warp-specialized FlashAttention forward, Gluon, Hopper
  attention_gluon_bwd_sm90.py  fused FlashAttention backward, Gluon, Hopper
  gluon_sm90.py                what the two Gluon kernels share: their input / environment check, layouts
  rope.py                      fused rotary embedding (megatron.model.rotary)
  swiglu.py                    fused SwiGLU gate, silu(gate) * up, forward and backward (megatron.model.gpt's MLP)
  cross_entropy.py             cross-entropy rows of the tiled loss (megatron.model.tiled)
  env.py                       whether Triton and Gluon import here, and interpreter mode

Triton chooses its CPU interpreter (TRITON_INTERPRET=1) when a kernel is defined, so import this package on
first use, not at start-up.
"""

from megatron.kernels.interface import flash_attention, flash_attention_backward, flash_attention_forward, is_available

__all__ = ["flash_attention", "flash_attention_backward", "flash_attention_forward", "is_available"]
