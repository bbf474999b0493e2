"""CachePool, the torch reference gather-apply, and the Triton kernel run in Triton's CPU interpreter.

The interpreter is switched on per test (``TRITON_INTERPRET=1`` through monkeypatch). That works in
any import order because ``harmonica.kernels.triton_gather`` decorates its kernel at first launch,
once per interpreter mode, not at import.
"""

from __future__ import annotations

import logging

import pytest
import torch

import harmonica.kernels as kernels
from harmonica.kernels import CachePool, apply_branch, backend, gather_apply


def make_pool(shape, num_slots=4, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pool = CachePool(num_slots, shape, dtype)
    for slot in range(num_slots):
        pool.write(slot, torch.randn(shape, generator=gen))
    return pool


def block_math(hidden, pool, indices, gates):
    """What the blocks' own code does, branch after branch, out of place."""
    for slot, gate in zip(indices, gates):
        gate = kernels.channel_gate(gate, hidden)
        hidden = apply_branch(hidden, pool.read(slot), gate)
    return hidden


def fp32_truth(hidden, pool, indices, gates):
    """The same sum computed in fp32 from the (exactly upcast) inputs."""
    hidden32 = hidden.float()
    for slot, gate in zip(indices, gates):
        gate = None if gate is None else kernels.channel_gate(gate.float(), hidden32)
        hidden32 = apply_branch(hidden32, pool.read(slot).float(), gate)
    return hidden32


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _drop_knob_override(monkeypatch)
    monkeypatch.setattr(kernels, "_announced", set())


@pytest.fixture
def interpreter(monkeypatch):
    triton = pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _drop_knob_override(monkeypatch)
    if kernels._triton_gather()[0] is None:
        pytest.skip(f"Triton does not import: {kernels._triton_gather()[1]}")
    assert backend("cpu") == kernels.TRITON_INTERPRETER
    return triton


def _drop_knob_override(monkeypatch):
    """Let triton.knobs read TRITON_INTERPRET from the environment even if someone set the knob."""
    try:
        import triton
    except Exception:
        return
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is not None and "interpret" in runtime.__dict__:
        monkeypatch.delitem(runtime.__dict__, "interpret")


# ------------------------------------------------------------------------------------ CachePool
def test_pool_is_one_buffer_written_in_place():
    pool = CachePool(3, (2, 5, 7), torch.bfloat16)
    assert pool.storage.shape == (3, 2, 5, 7) and pool.dtype == torch.bfloat16 and pool.device.type == "cpu"
    assert pool.nbytes == 3 * 2 * 5 * 7 * 2 and "3" in repr(pool)
    address = pool.storage.data_ptr()
    source = torch.randn(2, 5, 7)
    view = pool.write(1, source)
    assert pool.storage.data_ptr() == address and view.data_ptr() == pool.read(1).data_ptr()
    assert torch.equal(pool.read(1), source.to(torch.bfloat16))
    source.zero_()  # the pool holds a copy
    assert pool.read(1).abs().sum() > 0
    pool.write(1, torch.ones(2, 5, 7, requires_grad=True))
    assert not pool.storage.requires_grad and pool.storage.data_ptr() == address
    assert pool.matches(3, (2, 5, 7), torch.bfloat16, "cpu") and not pool.matches(3, (2, 5, 8), torch.bfloat16, "cpu")


def test_pool_rejects_misuse():
    with pytest.raises(ValueError):
        CachePool(0, (2, 3), torch.float32)
    pool = CachePool(2, (2, 3), torch.float32)
    with pytest.raises(ValueError, match="shape"):
        pool.write(0, torch.zeros(2, 4))
    with pytest.raises(IndexError):
        pool.write(2, torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="not been written"):
        pool.read(0)
    pool.write(0, torch.zeros(2, 3))
    assert pool.is_written(0) and not pool.is_written(1)
    pool.clear()
    assert not pool.is_written(0)


def test_pool_index_tensor_is_made_once_per_run():
    pool = CachePool(4, (1, 2), torch.float32)
    first = pool.index_tensor([3, 1])
    assert first.dtype == torch.int64 and first.tolist() == [3, 1]
    assert pool.index_tensor((3, 1)) is first and pool.index_tensor([1, 3]) is not first
    with pytest.raises(IndexError):
        pool.index_tensor([4])


# ------------------------------------------------------------------------------ torch reference
def test_reference_is_the_block_math_exactly_and_in_place():
    shape = (3, 6, 10)
    pool = make_pool(shape)
    hidden = torch.randn(shape)
    gates = [torch.randn(3, 1, 10), None, torch.randn(3, 10), torch.randn(10)]
    indices = [2, 0, 3, 2]
    expected = block_math(hidden, pool, indices, gates)

    kept = hidden.clone()
    fresh = gather_apply(hidden, pool, indices, gates, inplace=False, implementation="torch")
    assert torch.equal(fresh, expected) and torch.equal(hidden, kept)

    result = gather_apply(hidden, pool, indices, gates, implementation="torch")
    assert result is hidden and torch.equal(hidden, expected)


def test_inputs_are_checked():
    pool = make_pool((2, 3, 4), num_slots=2)
    hidden = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="pool slots"):
        gather_apply(torch.zeros(2, 3, 5), pool, [0], None)
    with pytest.raises(ValueError, match="gates"):
        gather_apply(hidden, pool, [0, 1], [None])
    with pytest.raises(ValueError, match="broadcast"):
        gather_apply(hidden, pool, [0], [torch.ones(3, 4, 4)])
    with pytest.raises(IndexError):
        gather_apply(hidden, pool.storage, [2], None)
    with pytest.raises(ValueError, match="in place"):
        gather_apply(torch.zeros(1, 3, 4).expand(2, 3, 4), pool, [0], None)
    with pytest.raises(ValueError, match="implementation"):
        gather_apply(hidden, pool, [0], None, implementation="cuda")
    pool.clear()
    with pytest.raises(RuntimeError, match="not been written"):
        gather_apply(hidden, pool, [0], None)


# ----------------------------------------------------------------------------- backend choice
def test_cpu_falls_back_to_torch_and_says_so_once(no_interpreter, caplog):
    pool = make_pool((2, 3, 4), num_slots=2)
    with caplog.at_level(logging.INFO, logger="harmonica.kernels"):
        assert backend("cpu") == kernels.TORCH
        gather_apply(torch.zeros(2, 3, 4), pool, [0, 1], None)
        gather_apply(torch.zeros(2, 3, 4), pool, [1], None)
    messages = [r.getMessage() for r in caplog.records if r.name == "harmonica.kernels"]
    assert len(messages) == 1 and "torch reference" in messages[0]


def test_without_triton_cuda_also_falls_back(no_interpreter, monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_triton_import", (None, "ImportError: No module named 'triton'"))
    with caplog.at_level(logging.INFO, logger="harmonica.kernels"):
        assert backend("cuda") == kernels.TORCH and backend("cuda") == kernels.TORCH
        assert backend("cpu") == kernels.TORCH
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Triton is not available" in warnings[0].getMessage()
    pool = make_pool((1, 2, 3), num_slots=1)
    with pytest.raises(RuntimeError, match="Triton is not available"):
        gather_apply(torch.zeros(1, 2, 3), pool, [0], None, implementation="triton")


def test_kernel_is_decorated_for_the_current_mode(interpreter, monkeypatch):
    from harmonica.kernels import triton_gather

    interpreted = triton_gather.kernel()
    assert type(interpreted).__name__ == "InterpretedFunction"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    compiled = triton_gather.kernel()
    assert compiled is not interpreted and type(compiled).__name__ == "JITFunction"


# ------------------------------------------------------------------ Triton kernel (interpreter)
@pytest.mark.parametrize("shape", [(3, 5, 37), (2, 70, 200), (4, 9)], ids=["odd", "multi-tile", "2d"])
def test_kernel_fp32_is_exact(interpreter, shape):
    pool = make_pool(shape)
    hidden = torch.randn(shape)
    batch, channels = shape[0], shape[-1]
    token_axes = [1] * (len(shape) - 2)
    gates = [torch.randn(batch, *token_axes, channels), None, torch.randn(batch, channels), torch.randn(())]
    indices = [3, 0, 1, 3]
    expected = block_math(hidden, pool, indices, gates)
    result = gather_apply(hidden, pool, indices, gates)
    assert result is hidden and torch.equal(result, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_half_precision_rounds_once(interpreter, dtype):
    shape = (2, 7, 45)
    pool = make_pool(shape, dtype=dtype)
    hidden = torch.randn(shape).to(dtype)
    gates = [torch.randn(2, 1, 45).to(dtype), None, torch.randn(2, 1, 45).to(dtype)]
    indices = [1, 2, 0]
    truth = fp32_truth(hidden, pool, indices, gates)
    reference = gather_apply(hidden, pool, indices, gates, inplace=False, implementation="torch")
    result = gather_apply(hidden.clone(), pool, indices, gates)
    # Within dtype tolerance of the per-branch reference (which rounds twice per branch).
    tolerance = 2 * len(indices) * torch.finfo(dtype).eps * truth.abs().max().item()
    torch.testing.assert_close(result, reference, rtol=0, atol=tolerance)
    # fp32 accumulation, one rounding at the end. Compiled Triton rounds to nearest even; the CPU
    # interpreter truncates fp32 -> bf16, so either rounding of the fp32 sum is accepted here.
    nearest = truth.to(dtype)
    toward_zero = nearest
    if dtype == torch.bfloat16:
        toward_zero = (truth.view(torch.int32) & ~0xFFFF).view(torch.float32).to(dtype)
    assert bool(((result == nearest) | (result == toward_zero)).all())


def test_kernel_handles_strided_hidden_in_place(interpreter):
    pool = make_pool((2, 6, 20))
    base = torch.randn(6, 2, 20)
    hidden = base.transpose(0, 1)  # [2, 6, 20], not contiguous
    gates = [torch.randn(2, 1, 20), torch.randn(2, 1, 20)]
    expected = block_math(hidden.clone(), pool, [0, 2], gates)
    result = gather_apply(hidden, pool, [0, 2], gates)
    assert result is hidden and torch.equal(base.transpose(0, 1), expected)

    pool4 = make_pool((2, 3, 4, 8), num_slots=2)
    base4 = torch.randn(2, 4, 3, 8)
    hidden4 = base4.transpose(1, 2)  # no [batch, tokens, channels] view exists: handled by a copy
    gate = torch.randn(2, 8)
    expected4 = block_math(hidden4.clone(), pool4, [1], [gate])
    assert gather_apply(hidden4, pool4, [1], [gate]) is hidden4
    assert torch.equal(base4.transpose(1, 2), expected4)


def test_kernel_out_of_place_run_shapes_and_fallbacks(interpreter):
    shape = (2, 4, 16)
    pool = make_pool(shape)
    hidden = torch.randn(shape)
    kept = hidden.clone()
    gates = [torch.randn(2, 1, 16), None]
    out = gather_apply(hidden, pool, torch.tensor([1, 1]), gates, inplace=False)  # tensor indices, repeated slot
    assert torch.equal(hidden, kept) and torch.equal(out, block_math(hidden, pool, [1, 1], gates))
    empty = gather_apply(hidden, pool, [], None, inplace=False)
    assert torch.equal(empty, hidden) and empty.data_ptr() != hidden.data_ptr()
    per_token = [torch.randn(2, 4, 16)]  # varies along tokens: the reference applies it
    assert torch.equal(gather_apply(hidden.clone(), pool, [3], per_token), block_math(hidden, pool, [3], per_token))


def test_autograd_goes_through_the_reference(interpreter):
    pool = make_pool((2, 3, 8), num_slots=2)
    hidden = torch.randn(2, 3, 8)
    gate = torch.randn(2, 1, 8, requires_grad=True)
    out = gather_apply(hidden, pool, [1, 0], [gate, None], inplace=False)
    out.sum().backward()
    assert torch.equal(gate.grad, pool.read(1).sum(dim=1, keepdim=True))


# ------------------------------------------------------------------------ K-term forecasts
def forecast_block_math(hidden, pool, terms, coefficients, gates):
    """What the blocks do with forecast branches: each branch is rebuilt by kernels.forecast (the
    function the cache hooks call), then gated and added, branch after branch."""
    for slots, coefs, gate in zip(terms, coefficients, gates):
        f = kernels.forecast([pool.read(s) for s in slots], coefs)
        hidden = apply_branch(hidden, f, kernels.channel_gate(gate, hidden))
    return hidden


FORECAST_RUN = dict(
    terms=[[3, 1, 0], [2], [0, 2], [1]],
    coefficients=[[2.2, -1.6, 0.4], [1.0], [1.5, -0.5], [0.75]],
)


def test_forecast_reference_is_the_block_math_and_reuse_is_untouched():
    shape = (2, 5, 12)
    pool = make_pool(shape)
    hidden = torch.randn(shape)
    gates = [torch.randn(2, 1, 12), None, torch.randn(2, 12), torch.randn(())]
    expected = forecast_block_math(hidden, pool, gates=gates, **FORECAST_RUN)
    got = gather_apply(hidden.clone(), pool, FORECAST_RUN["terms"], gates, coefficients=FORECAST_RUN["coefficients"],
                       implementation="torch")
    assert torch.equal(got, expected)
    # reuse: one slot with coefficient 1 is the cached tensor itself, exactly as before forecasts
    cached = pool.read(2)
    assert kernels.forecast([cached], [1.0]) is cached and kernels.forecast([cached]) is cached
    assert torch.equal(gather_apply(hidden.clone(), pool, [[2], [0]], None, coefficients=[[1.0], [1.0]]),
                       gather_apply(hidden.clone(), pool, [2, 0], None))
    with pytest.raises(ValueError, match="one number per cached slot"):
        gather_apply(hidden, pool, [[1, 2]], None, coefficients=[[1.0]])
    with pytest.raises(ValueError, match="needs its forecast coefficients"):
        gather_apply(hidden, pool, [[1, 2]], None)


@pytest.mark.parametrize("shape", [(3, 5, 37), (2, 70, 200)], ids=["odd", "multi-tile"])
def test_kernel_forecast_fp32_is_exact(interpreter, shape):
    pool = make_pool(shape)
    hidden = torch.randn(shape)
    batch, channels = shape[0], shape[-1]
    gates = [torch.randn(batch, 1, channels), None, torch.randn(batch, channels), torch.randn(())]
    expected = forecast_block_math(hidden, pool, gates=gates, **FORECAST_RUN)
    result = gather_apply(hidden, pool, FORECAST_RUN["terms"], gates, coefficients=FORECAST_RUN["coefficients"])
    assert result is hidden and torch.equal(result, expected)


def test_kernel_forecast_half_precision_close_to_fp32(interpreter):
    shape = (2, 7, 45)
    pool = make_pool(shape, dtype=torch.bfloat16)
    hidden = torch.randn(shape).to(torch.bfloat16)
    gates = [torch.randn(2, 1, 45).to(torch.bfloat16), None, None, torch.randn(2, 1, 45).to(torch.bfloat16)]
    pool32 = CachePool(pool.num_slots, shape, torch.float32)
    for s in range(pool.num_slots):
        pool32.write(s, pool.read(s).float())
    truth = forecast_block_math(hidden.float(), pool32, gates=[None if g is None else g.float() for g in gates],
                                **FORECAST_RUN)
    result = gather_apply(hidden.clone(), pool, FORECAST_RUN["terms"], gates, coefficients=FORECAST_RUN["coefficients"])
    torch.testing.assert_close(result.float(), truth, rtol=0, atol=2 * torch.finfo(torch.bfloat16).eps * truth.abs().max().item())
