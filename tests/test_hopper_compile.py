"""The kernels compile for Hopper (sm90) with TMA descriptors and the hardware tanh, on a machine without a GPU, the
forward's unmasked loop keeps the instruction count it was tuned for, and the Gluon kernels compile as launched.

Triton compiles to PTX without a device (ptxas ships with it), so CI catches a TMA or inline-asm construct that the
interpreter accepts but the GPU compiler rejects. The compile runs in a subprocess without TRITON_INTERPRET (under
the interpreter the kernels are not compilable objects). Running them is left to the GPU suite.
"""
import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
KERNELS = ("forward", "dkdv", "dq", "decode")


def hopper_ptx(name: str) -> str:
    """PTX of one kernel for sm90: the streamed operands as (1, 1, 64, 128) descriptors, every mask feature that
    changes the code (causal, padding, window) and the hardware tanh."""
    sys.path.insert(0, BENCHMARKS)
    from sass_loops import compile_for_gpu

    from hf_sdpa.kernels.tiles import SOFTCAP_HW_TANH
    return compile_for_gpu(name, HAS_PADDING=True, HAS_WINDOW=True, SOFTCAP=SOFTCAP_HW_TANH.value).asm["ptx"]


# A folder holding another Triton release (pip install --target), the one on the device image (.ci/run installs
# Triton 3.6 there): the Gluon kernels must compile with both, and Gluon's front end differs between them.
OTHER_TRITON = os.environ.get("HF_SDPA_OTHER_TRITON")


def sass_report(*args, triton_path=None) -> dict:
    """benchmarks/sass_loops.py's JSON report for one kernel (its arguments), compiled in a subprocess without the
    interpreter (with the Triton in triton_path, if given); skips where this Triton cannot assemble or disassemble
    for sm90."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    if triton_path:
        env["PYTHONPATH"] = os.pathsep.join([triton_path] + [p for p in [env.get("PYTHONPATH")] if p])
    run = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "sass_loops.py"), *map(str, args), "--json"],
                         env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0 and ("ptxas" in run.stderr.lower() or "nvdisasm" in run.stderr.lower()):
        pytest.skip(f"this Triton cannot assemble or disassemble for sm90 here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_compile_for_hopper_with_tma_and_hardware_tanh(name):
    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, __file__, name], env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0 and "ptxas" in run.stderr.lower():
        pytest.skip(f"this Triton cannot assemble for sm90 here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cp.async.bulk.tensor" in run.stdout  # the streamed tiles come through the copy engine
    assert "tanh.approx.f32" in run.stdout
    if name == "decode":  # the last chunk to arrive merges: the count orders the chunks' stores, reads skip L1
        assert "atom.global.gpu.acq_rel.add" in run.stdout and "ld.global.cg" in run.stdout


@pytest.mark.parametrize("masks", [False, True], ids=["plain", "softcap"])
def test_unmasked_forward_loop_scales_each_score_once(masks):
    """The softmax's instruction count is the forward's limit on Hopper at head size 64: on the key loop's short
    path (a block that skips the mask's branch) the scale rides on the exponent's multiply-add (one FFMA per score),
    and the only per-element multiplies left are the accumulator's rescale (benchmarks/sass_loops.py;
    benchmarks/NOTES.md entries 8 and 34); with softcap (and the padding and window, which leave the short path
    alone) the scores' scaling into the tanh as well, the factor after it riding on the FFMA too (entry 24)."""
    report = sass_report("forward", "--head-dim", 64, *["--masks"] * masks)
    [loop] = report["loops"]  # one loop over the key blocks (tiles.py)
    middle = loop["short_kinds"]  # a block that skips the mask's branch
    per_thread = 64 * 64 // 128  # scores (and accumulator elements) a thread holds: 64 x 64 tiles, 4 warps
    assert middle["HGMMA"] > 0
    assert middle["FFMA"] >= per_thread
    assert middle["FMUL"] <= (2 if masks else 1) * per_thread + 8, middle
    assert loop["short_path"] <= loop["instructions"] - per_thread, "the mask's selects lie on the short path"


@pytest.mark.parametrize("head_dim, block_n, stages, masks", [(128, 128, 2, False), (256, 64, 2, False),
                                                             (128, 128, 2, True)])
def test_gluon_forward_compiles_for_hopper_without_spills(head_dim, block_n, stages, masks):
    """kernels/hopper_forward.py at the tiles ops launches: per consumer warpgroup a loop over its tiles around a
    loop over a tile's key blocks that issues both matmuls of a block with the block's exponentials between the wait
    for Q K^T and the wait for P V (the overlap inside a warpgroup, which ptxas removes unless the softmax sits in
    its own branch), a loader loop issuing TMA copies, and at most one register spilled in the key loops under the
    partitions' register budgets."""
    report = sass_report("hopper_forward", "--head-dim", head_dim, "--block-n", block_n, "--stages", stages,
                         *["--masks"] * masks)
    # a thread holds 64 x block_n / 128 scores of two rows: their exponentials and the two rows' rescale factors,
    # which softcap (among the masks) in bfloat16 does without: its maxima are fixed (ops.fixed_max_fits), and a
    # quarter of its exponentials are taken on the FMA pipe, not the MUFU (the tile loops hold the key loops, so
    # each wait pair is counted in both)
    assert report["exponentials_between_waits"] == [block_n // 2 * 3 // 4 if masks else block_n // 2 + 2] * 4
    consumers = sorted((lp for lp in report["loops"] if lp["kinds"].get("HGMMA")), key=lambda lp: lp["instructions"])
    assert len(consumers) == 4
    for kinds in [lp["kinds"] for lp in consumers[:2]]:  # the key loops
        assert kinds["HGMMA"] == head_dim // 16 + block_n // 16  # Q K^T over the head, P V over the key block
        # Per thread 64 x head_dim / 128 multiplies rescale O (none with softcap's fixed maxima), as many normalise
        # the previous tile's output (in the branch of a tile's first block), and with softcap (among the masks)
        # 64 x block_n / 128 scale the scores into the tanh; the factor after it rides on the exponent's FFMA like
        # the plain scale.
        assert kinds["FMUL"] <= 2 * (head_dim // 2) + (block_n // 2 if masks else 0) + 16, kinds
        # At most one register spilled around the masked blocks' branch: with the tile loop's state, ptxas 12.8
        # (Triton 3.6) stores one there or none, and ptxas 12.9 (Triton 3.9) reloads the thread index that the
        # partitions' entry keeps on the stack where a masked block needs its key columns, and since the output
        # leaves by TMA (entry 28) also moves one tile-loop value through the stack once a block.
        assert kinds.get("STL", 0) <= 1 and kinds.get("LDL", 0) <= 2, kinds
    # An unmasked block's path (sass_loops' _block_path) holds its own MUFU work only, not the epilogue's
    # reciprocals: with softcap a tanh per score and three quarters of the exponentials, else the exponentials and
    # two rows' rescale factors.
    for lp in consumers[:2]:
        assert lp["block_kinds"]["MUFU"] == (block_n // 2 * 7 // 4 if masks else block_n // 2 + 2), lp["block_kinds"]
        assert lp["block_path"] < lp["instructions"] - (block_n // 2 if masks else 0)  # the mask's compares are off
        assert lp["groups_before_wait"] == 2  # Q K^T and the previous block's P V issued together
    assert any(lp["kinds"].get("UTMALDG") for lp in report["loops"] if not lp["kinds"].get("HGMMA"))


@pytest.mark.parametrize("head_dim, block_m, masks", [(128, 64, False), (64, 64, False), (64, 64, True)])
def test_gluon_backward_compiles_for_hopper_without_spills(head_dim, block_m, masks):
    """kernels/hopper_backward.py at the tiles ops launches: per consumer group the four matmuls of a query block
    (S^T and dP^T over the head, dV and dK over the block's rows) with P^T's exponentials between the wait for S^T
    and the wait for dP^T, a loader loop issuing TMA copies, and nothing spilled in the loops (at head size 128 the
    masks with softcap do spill: benchmarks/NOTES.md entry 15)."""
    report = sass_report("hopper_backward", "--head-dim", head_dim, "--block-m", block_m, "--stages", 2,
                         *["--masks"] * masks)
    consumers = [lp["kinds"] for lp in report["loops"] if lp["kinds"].get("HGMMA")]
    assert consumers and len(report["exponentials_between_waits"]) == len(consumers)
    # a thread holds 64 x block_m / 128 probabilities
    assert report["exponentials_between_waits"] == [64 * block_m // 128] * len(consumers)
    for kinds in consumers:
        assert kinds["HGMMA"] == 2 * (head_dim // 16) + 2 * (block_m // 16)
        assert "STL" not in kinds and kinds.get("LDL", 0) <= 8, kinds
    assert any(lp["kinds"].get("UTMALDG") for lp in report["loops"] if not lp["kinds"].get("HGMMA"))


@pytest.mark.parametrize("masks", [False, True])
def test_gluon_backward_above_head_size_128_splits_the_gradients_between_the_groups(masks):
    """At head size 256 the two consumer groups share 64 keys: one issues S^T over the head and dV += P^T dO over the
    block's rows, taking P^T's exponentials, the other dP^T over the head and dK += dS^T Q, taking none (it reads
    P^T from shared memory); nothing spilled in the loops."""
    report = sass_report("hopper_backward", "--head-dim", 256, "--block-m", 64, "--stages", 2, *["--masks"] * masks)
    consumers = [lp["kinds"] for lp in report["loops"] if lp["kinds"].get("HGMMA")]
    assert consumers
    for kinds in consumers:
        assert kinds["HGMMA"] == 256 // 16 + 64 // 16, kinds
        assert "STL" not in kinds and "LDL" not in kinds, kinds
    # a thread holds 64 x 64 / 128 probabilities (and with softcap as many tanh)
    assert sorted({kinds.get("MUFU", 0) for kinds in consumers})[0] == 0
    assert max(kinds.get("MUFU", 0) for kinds in consumers) >= 32
    assert any(lp["kinds"].get("UTMALDG") for lp in report["loops"] if not lp["kinds"].get("HGMMA"))


@pytest.mark.parametrize("head_dim, block_n, masks", [(128, 128, False), (128, 64, True)])
def test_gluon_dq_kernel_compiles_for_hopper_without_spills(head_dim, block_n, masks):
    """kernels/hopper_dq.py at the tiles ops launches (64-key blocks with padding, softcap or documents): per
    consumer group the three matmuls of a key block (S and dP over the head, dQ over the block's keys) with P's
    exponentials between the wait for S and the wait for dP, a loader loop issuing TMA copies, and nothing spilled
    in the loops."""
    report = sass_report("hopper_dq", "--head-dim", head_dim, "--block-n", block_n, "--stages", 2,
                         *["--masks"] * masks)
    consumers = [lp["kinds"] for lp in report["loops"] if lp["kinds"].get("HGMMA")]
    assert len(consumers) == 2
    assert report["exponentials_between_waits"] == [64 * block_n // 128] * 2  # a thread's share of 64 x block_n
    for kinds in consumers:
        assert kinds["HGMMA"] == 2 * (head_dim // 16) + block_n // 16, kinds
        assert "STL" not in kinds and "LDL" not in kinds, kinds
    assert [lp["groups_before_wait"] for lp in report["loops"] if "block_path" in lp] == [2] * 2  # S and dP together
    assert any(lp["kinds"].get("UTMALDG") for lp in report["loops"] if not lp["kinds"].get("HGMMA"))


@pytest.mark.parametrize("head_dim", [128, 64])
def test_gluon_backward_writing_dq_compiles_for_hopper(head_dim):
    """The same kernel writing dQ too (FUSED_DQ): per consumer group one more matmul per query block (its half of
    dQ's columns over the 128 keys), and a writer loop issuing the TMA reductions that add dQ's tiles."""
    report = sass_report("hopper_backward", "--head-dim", head_dim, "--block-m", 64, "--stages", 2, "--fused-dq")
    consumers = [lp["kinds"] for lp in report["loops"] if lp["kinds"].get("HGMMA")]
    assert consumers
    for kinds in consumers:  # dQ: head_dim / 2 columns in 32-column matmuls, over 2 x 64 keys in steps of 16
        assert kinds["HGMMA"] == 2 * (head_dim // 16) + 2 * (64 // 16) + head_dim // 8, kinds
    assert any(lp["kinds"].get("UTMAREDG") for lp in report["loops"] if not lp["kinds"].get("HGMMA"))


@pytest.mark.skipif(not OTHER_TRITON, reason="HF_SDPA_OTHER_TRITON names no folder with the device's Triton")
@pytest.mark.parametrize("kernel, options", [
    ("hopper_forward", ("--head-dim", 128, "--block-n", 128, "--masks")),
    ("hopper_forward", ("--head-dim", 256, "--block-n", 64)),
    ("hopper_backward", ("--head-dim", 128, "--block-m", 64, "--masks")),
    ("hopper_backward", ("--head-dim", 256, "--block-m", 64)),
    ("hopper_dq", ("--head-dim", 256, "--block-n", 32, "--masks")),
], ids=lambda x: x if isinstance(x, str) else "-".join(map(str, x)))
def test_gluon_kernels_compile_with_the_device_triton(kernel, options):
    """The Gluon kernels compile for sm90 with the other Triton release too (Triton 3.6 on the device image, 3.9
    here): in session 18 a tuple of constexprs held in a variable compiled with 3.9 and failed every Gluon case on
    the device's 3.6 (without masks, where the unused mask pointers are Q's)."""
    code = "import triton, sys; sys.stdout.write(triton.__version__)"
    version = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=OTHER_TRITON),
                             capture_output=True, text=True).stdout
    assert version and version != __import__("triton").__version__, version
    report = sass_report(kernel, *options, "--stages", 2, triton_path=OTHER_TRITON)
    assert any(lp["kinds"].get("HGMMA") for lp in report["loops"])


if __name__ == "__main__":
    print(hopper_ptx(sys.argv[1]))
