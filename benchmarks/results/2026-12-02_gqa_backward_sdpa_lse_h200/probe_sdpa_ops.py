"""Which arguments cuDNN's and the memory-efficient SDPA ops take for a forward with its log-sum-exp and a backward
from it (no bias, a [b, 1, S, S] and a [b, h, S, S] bias; undefined or empty seeds), each against the fp64 reference:
    PYTHONPATH=$PWD python3 benchmarks/results/2026-12-02_gqa_backward_sdpa_lse_h200/probe_sdpa_ops.py"""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from megatron.model.attention import _attention_mask, classic_attention

A = torch.ops.aten
torch.manual_seed(0)
b, S, h, d = 2, 256, 4, 64
q, k, v, do = (torch.randn(b, h, S, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))


def ref(mask_keep):
    qkv = [t.double().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    out = classic_attention(*qkv, mask_keep)
    g = torch.autograd.grad(out, qkv, do.double().transpose(1, 2))
    return out.transpose(1, 2), [t.transpose(1, 2) for t in g]


def err(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


r_out, r_g = ref(None)
res = A._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False, scale=None)
print("fwd outputs:", [(type(x).__name__, getattr(x, "shape", x), getattr(x, "dtype", None)) for x in res])
out, lse, csq, csk, mq, mk, ps, po, dbg = res
print("fwd err", err(out, r_out), "out strides", out.stride())
for name, args in {
    "forward's own": (ps, po, None, csq, csk),
    "None philox": (None, None, None, None, None),
    "empty philox": (torch.empty(0, device="cuda"), torch.empty(0, device="cuda"), None, None, None),
}.items():
    try:
        g = A._scaled_dot_product_cudnn_attention_backward(
            do, q, k, v, out, lse, args[0], args[1], args[2], args[3], args[4], S, S, 0.0, True, scale=None
        )
        print("bwd", name, [round(err(x, y), 5) for x, y in zip(g, r_g)])
    except Exception as e:
        print("bwd", name, "ERR", type(e).__name__, str(e)[:200])
docs = (torch.arange(S, device="cuda") // 100).expand(b, S)
keep = _attention_mask(S, q.device, docs, None)
r_out, r_g = ref(docs)
bias = torch.zeros(keep.shape, dtype=q.dtype, device="cuda").masked_fill_(~keep, float("-inf"))
for name, bb in {
    "b1SS": bias,
    "bhSS expand": bias.expand(b, h, S, S),
    "bhSS contiguous": bias.expand(b, h, S, S).contiguous(),
}.items():
    try:
        res = A._scaled_dot_product_cudnn_attention(q, k, v, bb, True, 0.0, False, False, scale=None)
        out, lse = res[:2]
        g = A._scaled_dot_product_cudnn_attention_backward(
            do, q, k, v, out, lse, res[6], res[7], bb, res[2], res[3], S, S, 0.0, False, scale=None
        )
        print("cudnn bias", name, round(err(out, r_out), 5), [round(err(x, y), 5) for x, y in zip(g, r_g)])
    except Exception as e:
        print("cudnn bias", name, "ERR", type(e).__name__, str(e)[:200])
    try:
        out, lse, ps2, po2 = A._scaled_dot_product_efficient_attention(q, k, v, bb, True, 0.0, False, scale=None)
        g = A._scaled_dot_product_efficient_attention_backward(
            do, q, k, v, bb, out, lse, ps2, po2, 0.0, [True, True, True, False], False, scale=None
        )
        print(
            "efficient bias",
            name,
            round(err(out, r_out), 5),
            [round(err(x, y), 5) for x, y in zip(g[:3], r_g)],
            lse.shape,
        )
    except Exception as e:
        print("efficient bias", name, "ERR", type(e).__name__, str(e)[:200])
# public SDPA with the cuDNN backend and a mask: does torch run cuDNN with a bias itself?
try:
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    print("public cudnn + bool mask", round(err(o, r_out), 5))
except Exception as e:
    print("public cudnn + mask ERR", str(e)[:200])
print(torch.__version__, torch.backends.cudnn.version())
