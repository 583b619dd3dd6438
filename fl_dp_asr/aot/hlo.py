"""Loop-aware costs and collectives of a compiled program, read from its optimized HLO text.

XLA's ``compiled.cost_analysis()`` counts the body of a ``while`` loop once (and is ``None``
for deviceless GPU programs), so a round step's FLOPs — local steps × chunks × blocks, all
loops — cannot be read from it. :func:`analyze` walks the text of ``compiled.as_text()``
instead: every computation's cost is the sum of its instructions', a ``while`` costs its
trip count × its body, a ``conditional`` its most expensive branch (the round where every
client trains every step), a fusion or call what it calls.

What is counted:

* **FLOPs**: ``dot`` and ``convolution`` only (2 · output elements · contraction size),
  inside fusions too — the matrix-unit work that MFU is about; elementwise work is left out.
* **HBM bytes**: for every kernel (an instruction outside fusions that is not bookkeeping:
  parameter, tuple, get-tuple-element, bitcast, constant, control flow), the bytes of its
  operands and results, except buffers in on-chip memory (layouts marked ``S(1)``). It is an
  estimate of the memory traffic (a fusion may read an operand more than once, or less).
* **Collectives** (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute,
  their async ``-start`` forms): result bytes and how many times a round runs them, and
  whether they sit inside a loop (e.g. per client or per local step).

Trip counts come from the loop's ``known_trip_count`` when the compiler recorded one, else
from its condition (``i < N`` with a constant N, the form ``lax.scan``/``fori_loop`` lower
to); loops whose count cannot be read are counted once and listed in ``unknown_loops``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterator

_DTYPE_BYTES = {
    "pred": 1,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(
    r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) + r")\[([0-9,]*)\](\{[^}]*\})?"
)
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \((.*)\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*)$")
_NO_TRAFFIC = {
    "parameter",
    "tuple",
    "get-tuple-element",
    "bitcast",
    "constant",
    "while",
    "conditional",
    "call",
    "after-all",
    "partition-id",
    "replica-id",
    "copy-done",
    "all-reduce-done",
    "all-gather-done",
    "collective-permute-done",
    "async-done",
    "opt-barrier",
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective instruction of the program.

    Attributes:
        op: e.g. ``"all-reduce"`` (the ``-start`` of an async pair is named without it).
        name: the instruction's name in the HLO.
        bytes: bytes of its result (a tuple's leaves summed), per run.
        per_round: how many times one run of the program executes it.
        loop_depth: the number of ``while`` loops around it (0: once per program run).
    """

    op: str
    name: str
    bytes: int
    per_round: int
    loop_depth: int


@dataclasses.dataclass(frozen=True)
class HloCost:
    """Loop-aware costs of one run of a compiled program (module docstring).

    Attributes:
        flops: dot/convolution FLOPs.
        hbm_bytes: estimated memory traffic (bytes).
        collectives: every collective instruction.
        loops: ``(loop name, trip count)`` of every ``while`` reached.
        unknown_loops: loops whose trip count could not be read (counted once).
    """

    flops: float
    hbm_bytes: float
    collectives: tuple[Collective, ...]
    loops: tuple[tuple[str, int], ...]
    unknown_loops: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Instruction:
    name: str
    type: str
    op: str
    operands: tuple[str, ...]
    arguments: str  # the text between the op's parentheses
    attributes: str


def _matching(text: str, start: int) -> int:
    """Index just past the bracket closing the one at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced brackets in HLO: {text[start : start + 80]!r}")


def _parse_instruction(line: str) -> _Instruction | None:
    match = _INSTRUCTION.match(line)
    if not match:
        return None
    name, rest = match.groups()
    type_end = _matching(rest, 0) if rest.startswith("(") else rest.index(" ")
    type_, rest = rest[:type_end], rest[type_end:].lstrip()
    paren = rest.find("(")
    if paren < 0:
        return None
    op = rest[:paren]
    close = _matching(rest, paren)
    operands = tuple(re.findall(r"%([^\s,()]+)", rest[paren:close]))
    return _Instruction(name, type_, op, operands, rest[paren + 1 : close - 1], rest[close:])


def _parse(text: str) -> tuple[dict[str, list[_Instruction]], dict[str, str], str]:
    """``(computations, types of every named value, entry computation name)``."""
    computations: dict[str, list[_Instruction]] = {}
    types: dict[str, str] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(2)
            computations[current] = []
            entry = current if header.group(1) else entry
            for param, type_ in re.findall(r"([\w.\-]+): ((?:\([^)]*\))|[^,()]+)", header.group(3)):
                types[param] = type_
        elif line.startswith("}"):
            current = None
        elif current is not None:
            instruction = _parse_instruction(line)
            if instruction is not None:
                computations[current].append(instruction)
                types[instruction.name] = instruction.type
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text (pass compiled.as_text()).")
    return computations, types, entry


def _arrays(type_: str) -> Iterator[tuple[str, tuple[int, ...], str]]:
    for dtype, dims, layout in _ARRAY.findall(type_):
        yield dtype, tuple(int(d) for d in dims.split(",") if d), layout


def type_bytes(type_: str, hbm_only: bool = False) -> int:
    """Bytes of an HLO type (a tuple's arrays summed); ``hbm_only``: leave out on-chip
    buffers (layout memory space ``S(1)``)."""
    total = 0.0
    for dtype, dims, layout in _arrays(type_):
        if hbm_only and "S(1)" in layout:
            continue
        total += _DTYPE_BYTES[dtype] * math.prod(dims)
    return int(total)


def _dims(type_: str) -> tuple[int, ...]:
    arrays = list(_arrays(type_))
    return arrays[0][1] if arrays else ()


def _flops(instruction: _Instruction, types: dict[str, str]) -> float:
    """2 · output elements · contraction size of a dot, a convolution or a cuBLAS GEMM (a
    GPU program's dots); else 0."""
    out = math.prod(_dims(instruction.type))
    if instruction.op == "dot":
        return _matmul_flops(instruction, types, out, r"lhs_contracting_dims=\{([0-9,]*)\}")
    if instruction.op == "custom-call" and "cublas" in instruction.attributes:
        return _matmul_flops(instruction, types, out, r'"lhs_contracting_dimensions":\[([^\]]*)\]')
    if instruction.op == "convolution":
        kernel = _dims(types.get(instruction.operands[1], ""))
        labels = re.search(r"dim_labels=[^_]*_([^-]*)->", instruction.attributes)
        if not kernel or not labels or "o" not in labels.group(1):
            return 0.0
        taps = math.prod(kernel) / kernel[labels.group(1).index("o")]
        return 2.0 * out * taps * _window_share(instruction, types)
    return 0.0


def _matmul_flops(
    instruction: _Instruction, types: dict[str, str], out: int, contracting: str
) -> float:
    """2 · output elements · the lhs dimensions the attribute matched by ``contracting``
    names (a dot's ``lhs_contracting_dims``, a cuBLAS call's backend config)."""
    lhs = _dims(types.get(instruction.operands[0], ""))
    found = re.search(contracting, instruction.attributes)
    contracted = [int(d) for d in re.findall(r"\d+", found.group(1))] if found else []
    return 2.0 * out * math.prod(lhs[d] for d in contracted if d < len(lhs))


def _window_share(instruction: _Instruction, types: dict[str, str]) -> float:
    """The share of a convolution's (output position, window tap) pairs that meet a real
    input element, not padding or a hole of ``lhs_dilate``: TPU writes a matmul with a
    split dimension (the heads) or per-example weights (vmapped clients) as a padded or
    base-dilated convolution whose naive count is several times the work."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instruction.attributes)
    window = re.search(r"window=\{([^}]*)\}", instruction.attributes)
    if not labels or not window:
        return 1.0
    lhs_labels, _, out_labels = labels.groups()
    lhs, out = _dims(types.get(instruction.operands[0], "")), _dims(instruction.type)
    fields = dict(item.split("=", 1) for item in window.group(1).split())
    sizes = [int(v) for v in fields.get("size", "").split("x") if v]

    def field(name: str, default: str) -> list[str]:
        return fields.get(name, "x".join([default] * len(sizes))).split("x")

    pads = [tuple(int(v) for v in pad.split("_")) for pad in field("pad", "0_0")]
    strides = [int(v) for v in field("stride", "1")]
    lhs_dilations = [int(v) for v in field("lhs_dilate", "1")]
    rhs_dilations = [int(v) for v in field("rhs_dilate", "1")]
    share = 1.0
    for d, width in enumerate(sizes):
        if str(d) not in lhs_labels or str(d) not in out_labels:
            return 1.0
        n, o = lhs[lhs_labels.index(str(d))], out[out_labels.index(str(d))]
        share *= _valid_taps(
            n, o, width, pads[d][0], strides[d], lhs_dilations[d], rhs_dilations[d]
        ) / (o * width)
    return share


@functools.cache
def _valid_taps(
    size: int,
    outputs: int,
    width: int,
    pad_low: int,
    stride: int,
    lhs_dilation: int,
    rhs_dilation: int,
) -> int:
    """(output, tap) pairs of one spatial dimension that land on one of the ``size`` input
    elements (at multiples of ``lhs_dilation`` after ``pad_low`` padding)."""
    last = (size - 1) * lhs_dilation
    if lhs_dilation == 1 and rhs_dilation == 1:
        return sum(
            max(0, min(width, last + 1 + pad_low - o * stride) - max(0, pad_low - o * stride))
            for o in range(outputs)
        )
    return sum(
        1
        for o in range(outputs)
        for k in range(width)
        if 0 <= (p := o * stride + k * rhs_dilation - pad_low) <= last and p % lhs_dilation == 0
    )


def _called(instruction: _Instruction, key: str) -> list[str]:
    """Computation names of an attribute: ``key=%c`` or ``key={%a, %b}``."""
    found = re.search(r"\b" + key + r"=(\{[^}]*\}|%[^\s,]+)", instruction.attributes)
    return re.findall(r"%([^\s,{}]+)", found.group(1)) if found else []


def _trip_count(
    instruction: _Instruction, computations: dict[str, list[_Instruction]]
) -> int | None:
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', instruction.attributes)
    if known:
        return int(known.group(1))
    condition = computations.get(next(iter(_called(instruction, "condition")), ""), [])
    constants = {i.name: i.arguments for i in condition if i.op == "constant"}
    for i in condition:
        if i.op == "compare" and "direction=LT" in i.attributes and len(i.operands) == 2:
            bound = constants.get(i.operands[1], "")
            if re.fullmatch(r"-?\d+", bound.strip()):
                return int(bound)
    return None


@dataclasses.dataclass
class _Cost:
    flops: float = 0.0
    hbm_bytes: float = 0.0
    collectives: list[Collective] = dataclasses.field(default_factory=list)
    loops: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    unknown: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: _Cost, times: int = 1, deeper: bool = False) -> None:
        self.flops += times * other.flops
        self.hbm_bytes += times * other.hbm_bytes
        self.collectives += [
            dataclasses.replace(c, per_round=c.per_round * times, loop_depth=c.loop_depth + deeper)
            for c in other.collectives
        ]
        self.loops += other.loops
        self.unknown += other.unknown


def analyze(hlo_text: str) -> HloCost:
    """Loop-aware FLOPs, HBM bytes and collectives of an optimized HLO module's text.

    Args:
        hlo_text: ``compiled.as_text()`` of a ``jax.jit(...).lower(...).compile()``.

    Raises:
        ValueError: the text holds no ENTRY computation.
    """
    computations, types, entry = _parse(hlo_text)

    @functools.cache
    def cost_of(name: str, fused: bool = False) -> _Cost:
        cost = _Cost()
        for instruction in computations.get(name, []):
            cost.flops += _flops(instruction, types)
            op = instruction.op
            if op == "fusion":
                for callee in _called(instruction, "calls"):
                    cost.flops += cost_of(callee, True).flops
            elif op == "while":
                trips = _trip_count(instruction, computations)
                if trips is None:
                    cost.unknown.append(instruction.name)
                cost.loops.append((instruction.name, trips or 1))
                for body in _called(instruction, "body"):
                    cost.add(cost_of(body), trips or 1, deeper=True)
            elif op == "conditional":
                branches = _called(instruction, "branch_computations") or _called(
                    instruction, "true_computation"
                ) + _called(instruction, "false_computation")
                if branches:
                    cost.add(max((cost_of(b) for b in branches), key=lambda c: c.flops))
            elif op in ("call", "async-start"):
                for callee in _called(instruction, "to_apply") + _called(instruction, "calls"):
                    cost.add(cost_of(callee))
            base = op.removesuffix("-start")
            if base in COLLECTIVES:
                cost.collectives.append(
                    Collective(base, instruction.name, _collective_bytes(instruction, types), 1, 0)
                )
            if not fused and op not in _NO_TRAFFIC:
                cost.hbm_bytes += _traffic(instruction, computations, types)
        return cost

    total = cost_of(entry)
    return HloCost(
        total.flops,
        total.hbm_bytes,
        tuple(total.collectives),
        tuple(total.loops),
        tuple(total.unknown),
    )


_SLICES = ("dynamic-slice", "slice", "gather")


def _traffic(
    instruction: _Instruction, computations: dict[str, list[_Instruction]], types: dict[str, str]
) -> float:
    """HBM bytes a kernel reads and writes: its operands and results, except that a buffer
    it only slices is charged the slices read (a loop body taking one block of stacked
    weights, one frame of a sequence), and a buffer it updates in place the update."""
    operands = [type_bytes(types.get(o, ""), hbm_only=True) for o in instruction.operands]
    result = type_bytes(instruction.type, hbm_only=True)
    if instruction.op in _SLICES and operands:
        return result + min(operands[0], result) + sum(operands[1:])
    if instruction.op == "dynamic-update-slice" and len(operands) > 1:
        return 2.0 * operands[1] + sum(operands[2:])
    if instruction.op != "fusion":
        return result + sum(operands)
    fused = computations.get(next(iter(_called(instruction, "calls")), ""), [])
    total = sum(
        _fused_reads(fused, k, size, computations, types) for k, size in enumerate(operands)
    )
    root = fused[-1] if fused else None
    if root is None or not any(i.op == "dynamic-update-slice" for i in fused):
        return total + result
    # Results written in place by a dynamic-update-slice are charged the update only; the
    # fusion's own result type says which are in HBM.
    results = list(_arrays(instruction.type))
    outputs = root.operands if root.op == "tuple" else [root.name]
    by_name = {i.name: i for i in fused}
    for (dtype, dims, layout), name in zip(results, outputs):
        if "S(1)" in layout:
            continue
        inner = by_name.get(name)
        if inner is not None and inner.op == "dynamic-update-slice":
            total += type_bytes(types.get(inner.operands[1], ""))
        else:
            total += _DTYPE_BYTES[dtype] * math.prod(dims)
    return total


def _fused_reads(
    fused: list[_Instruction],
    index: int,
    full: float,
    computations: dict[str, list[_Instruction]],
    types: dict[str, str],
) -> float:
    """Bytes a fused computation reads of its parameter ``index`` (``full`` bytes): none if
    unused or only updated in place, the slices if only sliced (through bitcasts and nested
    fusions), else all of it."""
    name = next(
        (i.name for i in fused if i.op == "parameter" and i.arguments.strip() == str(index)), None
    )
    if name is None:
        return full
    read = 0.0
    pending = [name]
    while pending:
        current = pending.pop()
        for user in (i for i in fused if current in i.operands):
            if user.op == "bitcast":
                pending.append(user.name)
            elif user.op in _SLICES and user.operands[0] == current:
                read += type_bytes(user.type)
            elif user.op == "dynamic-update-slice" and user.operands[0] == current:
                continue  # updated in place: the write is charged
            elif user.op == "fusion":
                nested = computations.get(next(iter(_called(user, "calls")), ""), [])
                for k, operand in enumerate(user.operands):
                    if operand == current:
                        read += _fused_reads(nested, k, full, computations, types)
            else:
                return full
    return min(full, read)


def _collective_bytes(instruction: _Instruction, types: dict[str, str]) -> int:
    """The data a collective moves: its operands' bytes (an async start's result also holds
    its output buffers and context)."""
    return sum(type_bytes(types.get(o, "")) for o in instruction.operands)
