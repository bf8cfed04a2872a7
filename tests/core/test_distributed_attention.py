"""The Ulysses exchanges (ours fused and overlapped, DeepSpeed's DistributedAttention): forward and
backward equal single-process attention, with the layer's sliding window and softmax scale too."""

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron.config import AttentionConfig, ModelConfig
from megatron.training.jit_ops import skip_cpu_comm_build

CASES = [
    # (backend, heads, kv_heads, documents, ParallelAttention options)
    ("classic", 4, 4, False, {}),
    ("sdpa", 4, 2, False, {}),  # GQA, kv heads == SP
    ("sdpa", 4, 1, True, {}),  # kv heads < SP: replicated before the all-to-all; packed documents
    ("classic", 8, 2, True, {}),
    ("sdpa", 8, 8, True, {}),  # 4 (SP=2) or 2 (SP=4) kv heads per rank: the overlapped exchange pipelines them
    # Sliding windows across the SP ranks' slices (6 tokens each at SP=4), with documents and a softmax scale
    ("classic", 4, 2, False, {"window": 5}),
    ("sdpa", 4, 1, True, {"window": 7, "softmax_scale": 0.3}),
    ("classic", 8, 8, True, {"window": 10, "softcap": 3.0}),
]
OVERLAP_CHUNKS = 4  # reduced per case to what divides the kv heads per rank: 1, 2 and 4 chunks all run
B, S, HIDDEN = 2, 24, 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _inputs(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, HIDDEN, generator=g, dtype=torch.float64)
    grad_out = torch.randn(B, S, HIDDEN, generator=g, dtype=torch.float64)
    positions = torch.arange(S).expand(B, S)
    docs = torch.cat([torch.zeros(B, 7), torch.ones(B, 10), 2 * torch.ones(B, S - 17)], dim=1).long()
    docs[1] = torch.cat([torch.zeros(13), torch.ones(S - 13)]).long()
    return x, grad_out, positions, docs


def _attention(cfg, att, sp_group=None, options=None):
    from megatron.model.attention import ParallelAttention
    from megatron.parallelize import apply_ulysses

    torch.manual_seed(0)
    attn = ParallelAttention(cfg, att, **(options or {})).double()
    if sp_group is not None:
        apply_ulysses(attn, sp_group, att.ulysses_exchange, att.ulysses_overlap_chunks)
    return attn


def _run_case(cfg, att, docs_on, sp_group, sp, rank, options=None):
    x, grad_out, positions, docs = _inputs(cfg, 1)
    docs = docs if docs_on else None
    attn = _attention(cfg, att, sp_group, options)
    s = S // sp
    sl = slice(rank * s, (rank + 1) * s)
    x_local = x[:, sl].clone().requires_grad_(True)
    out = attn(x_local, positions[:, sl], docs)
    out.backward(grad_out[:, sl])
    grads = {n: p.grad.clone() for n, p in attn.named_parameters()}
    if sp_group is not None:
        outs = [torch.empty_like(out) for _ in range(sp)]
        dist.all_gather(outs, out.detach().contiguous(), group=sp_group)
        dxs = [torch.empty_like(x_local.grad) for _ in range(sp)]
        dist.all_gather(dxs, x_local.grad.contiguous(), group=sp_group)
        for g in grads.values():
            dist.all_reduce(g, group=sp_group)  # each rank saw only its tokens: weight grads add up
        return torch.cat(outs, 1), torch.cat(dxs, 1), grads
    return out.detach(), x_local.grad, grads


def _worker(rank, world, port, result_file, exchange):
    import deepspeed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    skip_cpu_comm_build()
    deepspeed.init_distributed("gloo", verbose=False)
    from megatron import parallel_state as ps

    ps.initialize_model_parallel(world)
    results = []
    for backend, heads, kv, docs_on, options in CASES:
        cfg = ModelConfig(
            hidden_size=HIDDEN, num_attention_heads=heads, num_key_value_heads=kv, seq_length=S,
            use_rotary_position_embeddings=True,
        )  # fmt: skip
        att = AttentionConfig(backend=backend, ulysses_exchange=exchange, ulysses_overlap_chunks=OVERLAP_CHUNKS)
        results.append(_run_case(cfg, att, docs_on, ps.get_sequence_parallel_group(), world, rank, options))
    if rank == 0:
        torch.save(results, result_file)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("exchange", ["fused", "overlap", "deepspeed"])
@pytest.mark.parametrize("sp", [2, 4])
def test_distributed_attention_matches_single_process(sp, exchange):
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "out.pt")
        mp.start_processes(_worker, args=(sp, _free_port(), result_file, exchange), nprocs=sp, start_method="spawn")
        results = torch.load(result_file)
    for (backend, heads, kv, docs_on, options), (out, dx, grads) in zip(CASES, results):
        cfg = ModelConfig(
            hidden_size=HIDDEN, num_attention_heads=heads, num_key_value_heads=kv, seq_length=S,
            use_rotary_position_embeddings=True,
        )  # fmt: skip
        ref_out, ref_dx, ref_grads = _run_case(cfg, AttentionConfig(backend=backend), docs_on, None, 1, 0, options)
        what = f"{backend} h={heads} kv={kv} docs={docs_on} {options} sp={sp} {exchange}"
        torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10, msg=what)
        torch.testing.assert_close(dx, ref_dx, rtol=1e-10, atol=1e-10, msg=what)
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-10, msg=f"{what} {name}")


def test_document_mask_blocks_cross_document_attention():
    """Changing tokens of document 0 must not change outputs of later documents."""
    cfg = ModelConfig(hidden_size=HIDDEN, num_attention_heads=4, seq_length=S)
    x, _, positions, docs = _inputs(cfg, 2)
    attn = _attention(cfg, AttentionConfig(backend="sdpa"))
    out = attn(x, positions, docs)
    x2 = x.clone()
    x2[0, :7] += 1.0  # sample 0, document 0 spans tokens 0..6
    out2 = attn(x2, positions, docs)
    torch.testing.assert_close(out[0, 7:], out2[0, 7:], rtol=0, atol=1e-12)
    assert (out[0, :7] - out2[0, :7]).abs().max() > 1e-3


def _retained_worker(rank, world, port, result_file):
    """Bytes of tensors a checkpointed attention keeps alive after its forward, per exchange."""
    import gc

    import deepspeed
    from torch.utils.checkpoint import checkpoint

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    skip_cpu_comm_build()
    deepspeed.init_distributed("gloo", verbose=False)
    from megatron import parallel_state as ps

    ps.initialize_model_parallel(world)
    seq, retained = 512, {}
    for exchange in ("fused", "overlap"):
        cfg = ModelConfig(hidden_size=HIDDEN, num_attention_heads=8, seq_length=seq)
        att = AttentionConfig(backend="sdpa", ulysses_exchange=exchange, ulysses_overlap_chunks=2)
        attn = _attention(cfg, att, ps.get_sequence_parallel_group())
        x = torch.randn(1, seq // world, HIDDEN, dtype=torch.float64, requires_grad=True)
        positions = torch.arange(seq).view(1, seq)[:, rank * (seq // world) : (rank + 1) * (seq // world)]
        gc.collect()
        before = {t.untyped_storage().data_ptr() for t in gc.get_objects() if torch.is_tensor(t)}
        out = checkpoint(attn, x, positions, None, use_reentrant=False)
        gc.collect()
        live = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in gc.get_objects() if torch.is_tensor(t)}
        retained[exchange] = sum(n for p, n in live.items() if p not in before and p != out.untyped_storage().data_ptr())
        out.sum().backward()  # and it still runs backward
        del out, x, attn
    if rank == 0:
        torch.save(retained, result_file)
    dist.barrier()
    dist.destroy_process_group()


def test_overlapped_exchange_keeps_nothing_under_checkpointing():
    """Under activation checkpointing the overlapped exchange holds no more than the fused one
    after forward (its chunks are ordinary autograd nodes, so checkpointing drops their tensors)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "retained.pt")
        mp.start_processes(_retained_worker, args=(2, _free_port(), result_file), nprocs=2, start_method="spawn")
        retained = torch.load(result_file)
    # one [1, 512, 8/2, 4] fp64 tensor is 64 KiB; holding the chunks' Q, K, V and outputs would be 256 KiB
    assert retained["overlap"] <= retained["fused"] + 16 * 1024, retained


def _nccl_worker(rank, world, port, result_file):
    """Fused and overlapped exchanges over NCCL (async all-to-alls on their own stream), bf16."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    group = dist.new_group(list(range(world)))
    from megatron.model.attention import SDPAAttention
    from megatron.model.ulysses import FusedUlyssesAttention, OverlappedUlyssesAttention

    g = torch.Generator(device="cuda").manual_seed(rank)
    b, s, h, d = 1, 4096, 16, 128
    q, k, v, dout = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
    results = {}
    for name, module in (("fused", FusedUlyssesAttention(SDPAAttention(), group)),
                         ("overlap", OverlappedUlyssesAttention(SDPAAttention(), group, 4))):  # fmt: skip
        qi, ki, vi = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = module(qi, ki, vi)
        out.backward(dout)
        results[name] = [t.float().cpu() for t in (out, qi.grad, ki.grad, vi.grad)]
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, result_file)
    dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_overlapped_exchange_matches_fused_over_nccl():
    """On GPUs the overlapped exchange's async all-to-alls give what the fused one gives (same
    kernels per head, so equal up to bf16 reduction order)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "nccl.pt")
        mp.start_processes(_nccl_worker, args=(2, _free_port(), result_file), nprocs=2, start_method="spawn")
        per_rank = torch.load(result_file)
    for rank, results in enumerate(per_rank):
        for name, fused, overlap in zip(("out", "dq", "dk", "dv"), results["fused"], results["overlap"]):
            torch.testing.assert_close(overlap, fused, rtol=2e-2, atol=2e-2, msg=f"rank {rank} {name}")
