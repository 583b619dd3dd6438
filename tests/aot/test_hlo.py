"""Loop-aware costs from optimized HLO: hand-made text and a compiled program."""

import jax
import jax.numpy as jnp
import pytest

from fl_dp_asr.aot import hlo

# A while loop (5 trips, condition i < 5) around a dot and an all-reduce of 4 KiB, then a
# conditional whose branches cost a dot of 2·8·8·8 FLOPs or nothing, then one all-reduce.
HAND_MADE = """HloModule m

%body (p: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %p = (s32[], f32[8,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,8]{1,0} get-tuple-element(%p), index=1
  %d = f32[8,8]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %ar = f32[32,32]{1,0} all-reduce(%big), replica_groups={}, to_apply=%add
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[8,8]{1,0}) tuple(%j, %d)
}

%cond (q: (s32[], f32[8,8])) -> pred[] {
  %q = (s32[], f32[8,8]{1,0}) parameter(0)
  %k = s32[] get-tuple-element(%q), index=0
  %five = s32[] constant(5)
  ROOT %lt = pred[] compare(%k, %five), direction=LT
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%heavy (h: f32[8,8]) -> f32[8,8] {
  %h = f32[8,8]{1,0} parameter(0)
  ROOT %hd = f32[8,8]{1,0} dot(%h, %h), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%light (l: f32[8,8]) -> f32[8,8] {
  ROOT %l = f32[8,8]{1,0} parameter(0)
}

ENTRY %main (x0: f32[8,8], big: f32[32,32], c: pred[]) -> f32[8,8] {
  %x0 = f32[8,8]{1,0} parameter(0)
  %big = f32[32,32]{1,0} parameter(1)
  %c = pred[] parameter(2)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,8]{1,0}) tuple(%zero, %x0)
  %w = (s32[], f32[8,8]{1,0}) while(%init), condition=%cond, body=%body
  %y = f32[8,8]{1,0} get-tuple-element(%w), index=1
  %z = f32[8,8]{1,0} conditional(%c, %y, %y), branch_computations={%light, %heavy}
  %sum = f32[8,8]{1,0} all-reduce(%z), replica_groups={}, to_apply=%add
  ROOT %r = f32[8,8]{1,0} copy(%sum)
}
"""


def test_hand_made_module_counts_loops_branches_and_collectives():
    cost = hlo.analyze(HAND_MADE)
    dot = 2 * 8 * 8 * 8
    assert cost.loops == (("w", 5),)
    assert cost.unknown_loops == ()
    assert cost.flops == 5 * dot + dot  # the loop's dot 5 times, the heavier branch once
    by_name = {c.name: c for c in cost.collectives}
    assert by_name["ar"] == hlo.Collective("all-reduce", "ar", 32 * 32 * 4, 5, 1)
    assert by_name["sum"] == hlo.Collective("all-reduce", "sum", 8 * 8 * 4, 1, 0)


def test_on_chip_buffers_are_not_memory_traffic():
    assert hlo.type_bytes("(f32[2,3]{1,0}, bf16[4]{0:T(128)S(1)})") == 24 + 8
    assert hlo.type_bytes("(f32[2,3]{1,0}, bf16[4]{0:T(128)S(1)})", hbm_only=True) == 24


def test_compiled_scan_of_vmapped_matmuls_counts_every_trip():
    """Per-client weights (vmap) trained by 10 scanned steps: fwd x@w and the weight
    gradient, 2 · (2·B·D·E) FLOPs per client and step, whatever the backend does."""
    clients, batch, dim_in, dim_out, steps = 4, 16, 32, 64, 10

    def train(w, x):
        def one_client(w, x):
            def step(w, _):
                g = jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w) ** 2))(w)
                return w - 0.1 * g, None

            return jax.lax.scan(step, w, None, length=steps)[0]

        return jax.vmap(one_client)(w, x).sum(0)

    compiled = (
        jax.jit(train)
        .lower(
            jax.ShapeDtypeStruct((clients, dim_in, dim_out), jnp.float32),
            jax.ShapeDtypeStruct((clients, batch, dim_in), jnp.float32),
        )
        .compile()
    )
    cost = hlo.analyze(compiled.as_text())
    assert cost.flops == clients * steps * 2 * (2 * batch * dim_in * dim_out)
    assert [trips for _, trips in cost.loops] == [steps]


def test_text_without_entry_is_refused():
    with pytest.raises(ValueError, match="ENTRY"):
        hlo.analyze("HloModule m\n")


SLICING_LOOP = """HloModule m

%fused_slice (param_0: f32[36,256], param_1: s32[]) -> f32[1,256] {
  %param_0 = f32[36,256]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  ROOT %ds = f32[1,256]{1,0} dynamic-slice(%param_0, %param_1, %zero), dynamic_slice_sizes={1,256}
}

%fused_update (param_0: f32[36,256], param_1: f32[1,256], param_2: s32[]) -> f32[36,256] {
  %param_0 = f32[36,256]{1,0} parameter(0)
  %param_1 = f32[1,256]{1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %zero = s32[] constant(0)
  ROOT %dus = f32[36,256]{1,0} dynamic-update-slice(%param_0, %param_1, %param_2, %zero)
}

%body (p: (s32[], f32[36,256], f32[36,256])) -> (s32[], f32[36,256], f32[36,256]) {
  %p = (s32[], f32[36,256]{1,0}, f32[36,256]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %w = f32[36,256]{1,0} get-tuple-element(%p), index=1
  %acc = f32[36,256]{1,0} get-tuple-element(%p), index=2
  %block = f32[1,256]{1,0} fusion(%w, %i), kind=kLoop, calls=%fused_slice
  %new = f32[36,256]{1,0} fusion(%acc, %block, %i), kind=kLoop, calls=%fused_update
  %one = s32[] constant(1)
  %j = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[36,256]{1,0}, f32[36,256]{1,0}) tuple(%j, %w, %new)
}

%cond (q: (s32[], f32[36,256], f32[36,256])) -> pred[] {
  %q = (s32[], f32[36,256]{1,0}, f32[36,256]{1,0}) parameter(0)
  %k = s32[] get-tuple-element(%q), index=0
  %n = s32[] constant(36)
  ROOT %lt = pred[] compare(%k, %n), direction=LT
}

ENTRY %main (w0: f32[36,256], a0: f32[36,256]) -> (s32[], f32[36,256], f32[36,256]) {
  %w0 = f32[36,256]{1,0} parameter(0)
  %a0 = f32[36,256]{1,0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[36,256]{1,0}, f32[36,256]{1,0}) tuple(%zero, %w0, %a0)
  ROOT %w = (s32[], f32[36,256]{1,0}, f32[36,256]{1,0}) while(%init), condition=%cond, body=%body
}
"""


def test_a_loop_over_stacked_blocks_is_charged_one_block_per_trip():
    """Reading block i of stacked weights and writing block i of an accumulator costs a
    block's bytes per trip, not the whole stack's (scanned blocks would count 36× too much)."""
    cost = hlo.analyze(SLICING_LOOP)
    block, index = 256 * 4, 4
    slice_fusion = block + index + block  # reads a block and the index, writes a block
    update_fusion = block + index + block  # reads the block, writes it into the stack
    counter = 3 * 4  # i + 1 on s32 scalars
    assert cost.hbm_bytes == 36 * (slice_fusion + update_fusion + counter)
