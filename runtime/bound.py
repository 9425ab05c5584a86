"""A family plan loaded once and bound to each step's data: :class:`LoadedFamily` and :class:`BoundPlan`.

``load_plan(family_plan)`` gives a :class:`LoadedFamily`. Each step, :meth:`LoadedFamily.bind`
turns that step's O(N) tensors (document ids, ``position_ids``, ``cu_seqlens``, parents, buckets,
keep flags: :data:`STEP_DATA`) into a :class:`BoundPlan`, whose tensors are a
:class:`~maskc.runtime.device.DevicePlan` of the interval variant in the same layout as a static
plan's: the kernels and the reference backend walk both alike, through the same autograd entry as
``LoadedPlan``. Binding runs on the device (``maskc.runtime.family``): no host synchronisation, no
data-dependent Python, shapes that depend only on the sizes, so a step can be captured in a CUDA
graph and new data never compiles a new kernel.

A call is checked and its launches decided once per shape, as for a static plan: the launch grid
follows the traits the compiler recorded in the family plan, never the bound lists, so every step of
one shape launches alike. The mask's batch and heads come from the data's shape (a row of the data
per batch row; per head for the sorted families) and broadcast like a static plan's.

Grouped key/value heads and the sorted families (hash buckets, query/key dropping): the dK/dV kernel
walks a key/value head's group of query heads over one order of its keys, so a key order belongs to
a key/value head. Their key data is therefore given per key/value head (``k_buckets``/``k_keep``
``[B, Hkv, N]``, ``Hkv`` dividing the query data's heads) and bound once per query head of its
group; a call whose groups would mix key orders is refused.
"""

from __future__ import annotations

import torch

from maskc.runtime import family
from maskc.runtime import loaded
from maskc.runtime import ops
from maskc.runtime.call import Call, check_call
from maskc.runtime.device import DevicePlan
from maskc.runtime.family import BindError
from maskc.runtime.format import FamilyPlan, validate_family

STEP_DATA: dict[str, tuple[str, ...]] = {
    "documents": ("doc_ids", "position_ids", "cu_seqlens", "n", "prefix"),
    "shared_prefix": ("group_ids", "segment_ids"),
    "token_tree": ("parents",),
    "hash_buckets": ("q_buckets", "k_buckets", "q_keep", "k_keep"),
    "qk_dropping": ("q_keep", "k_keep"),
}
"""Per family kind, the step data :meth:`LoadedFamily.bind` takes by keyword."""

DOCUMENT_SOURCES = ("doc_ids", "position_ids", "cu_seqlens")  # a documents step gives exactly one


class LoadedFamily:
    """A validated family plan, ready to bind: each step's data gives a :class:`BoundPlan`.

    ``device`` (optional): where the step data must live. Launch decisions are kept per call shape
    (with the bound mask's batch and heads), so a step repeats none of them.
    """

    def __init__(self, plan: FamilyPlan, device: torch.device | str | None = None):
        validate_family(plan)
        self.plan = plan
        self.device = loaded.canonical_device(torch.device(device)) if device is not None else None
        self._routes: dict[tuple, tuple[Call, loaded.TileBackend]] = {}
        self._empty: dict[torch.device, torch.Tensor] = {}

    def bind(self, backend: str = "auto", check: bool = False, **step_data: torch.Tensor | int) -> "BoundPlan":
        """Bind the family to one step's data (keywords by kind: :data:`STEP_DATA`): the bound plan,
        tensors on the data's device, made without a host synchronisation.

        ``backend`` binds with the Triton kernels (``"triton"``), torch operations
        (``"reference"``) or, ``"auto"``, Triton on CUDA tensors and under ``TRITON_INTERPRET=1``.
        ``check=True`` also checks the values of the data that has rules (``cu_seqlens``,
        ``parents``, bucket ids) on the host first: a synchronisation, for debugging.
        """
        runs, key_group = self._runs(step_data, backend, check)
        binding = family.bind(runs, self.plan.block_m, self.plan.block_n, backend)
        return BoundPlan(self, self._device_plan(binding), key_group)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, backend: str = "auto",
                  **step_data: torch.Tensor | int) -> torch.Tensor:
        """Bind this step's data and run the attention, with autograd: :meth:`bind`, then
        :meth:`BoundPlan.attention`. ``cu_seqlens`` takes its token count from q."""
        if "cu_seqlens" in step_data and isinstance(q, torch.Tensor) and q.dim() == 4:
            step_data.setdefault("n", q.shape[2])
        return self.bind(backend, **step_data).attention(q, k, v, scale=scale, backend=backend)

    __call__ = attention

    def _runs(self, data: dict, backend: str, check: bool) -> tuple[family.Runs, int]:
        """The step's visible runs, by the family's binder, and how many query heads share one
        key order (the query data's heads per key data head; 1 for the unsorted families)."""
        kind, params = self.plan.kind, self.plan.params
        _check_names(kind, data)
        self._check_data(data)
        if kind == "documents":
            return _document_runs(data, params, backend, check), 1
        if kind == "shared_prefix":
            return family.shared_prefix(data["group_ids"], data["segment_ids"], backend=backend), 1
        if kind == "token_tree":
            return family.token_tree(data["parents"], params["max_depth"], preorder=params["preorder"], check=check), 1
        q_name, k_name = ("q_buckets", "k_buckets") if kind == "hash_buckets" else ("q_keep", "k_keep")
        group = _key_group(data[q_name], q_name, data[k_name], k_name)
        keys = {name: _per_query_head(data[name], group) for name in ("k_buckets", "k_keep") if data.get(name) is not None}
        if kind == "hash_buckets":
            runs = family.hash_buckets(data["q_buckets"], keys["k_buckets"], data.get("q_keep"), keys.get("k_keep"),
                                       causal=params["causal"], check=check)
        else:
            runs = family.qk_dropping(data["q_keep"], keys["k_keep"], causal=params["causal"])
        return runs, group

    def _check_data(self, data: dict) -> None:
        """Every tensor on the family's device (if it has one) and no sequence past ``max_len``."""
        for name, value in data.items():
            if not isinstance(value, torch.Tensor):
                continue
            if self.device is not None and value.device != self.device:
                raise BindError(f"{name} is on {value.device}, but the family was loaded for {self.device}")
            tokens = value.shape[-1] if name != "cu_seqlens" and value.dim() else 0
            if tokens > self.plan.max_len:
                raise BindError(f"{name} has {tokens} tokens per row; the family binds at most max_len = {self.plan.max_len}")
        n = data.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > self.plan.max_len:
            raise BindError(f"n = {n} tokens; the family binds at most max_len = {self.plan.max_len}")

    def _device_plan(self, binding: family.Binding) -> DevicePlan:
        """The bound step's tensors in the kernels' layout: ELL ranges for the lists, the family's
        traits for the launch grid, per-slice permutations (or none)."""
        lists, plan = binding.lists, self.plan
        empty = self._empty_on(binding.intervals.device)
        words = plan.block_n // 32
        no_perm = binding.perm_q is None
        return DevicePlan(
            q_len=lists.q_len, kv_len=lists.kv_len, batch=binding.batch, heads=binding.heads,
            block_m=plan.block_m, block_n=plan.block_n,
            **lists.list_tensors(),
            bitmaps=empty.view(0, plan.block_m, words), intervals=binding.intervals, variant="intervals",
            row_order=empty, col_order=empty,
            perm_q=empty.view(0, lists.q_len) if no_perm else binding.perm_q,
            perm_k=empty.view(0, lists.kv_len) if no_perm else binding.perm_k,
            **plan.traits,
        )

    def _empty_on(self, device: torch.device) -> torch.Tensor:
        """An empty int32 tensor on ``device``, made once (the arrays a bound step has none of)."""
        if device not in self._empty:
            self._empty[device] = torch.empty(0, dtype=torch.int32, device=device)
        return self._empty[device]

    def _route(self, bound: "BoundPlan", q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> loaded.Route:
        """How a call runs through ``bound``: the backend readied for the call's shape at its first
        step (checked, launches decided), over this step's tensors."""
        plan = bound.plan
        key = (loaded.route_key(q, k, v, backend), plan.batch, plan.heads, plan.perm_strides, bound.key_group)
        ready = self._routes.get(key)
        if ready is None:
            call = check_call(plan, q, k, v)
            _check_key_order(bound, call)
            ready = (call, loaded.backend_module(backend, q).prepare(plan, call))
            if len(self._routes) >= loaded.MAX_ROUTES:
                self._routes.clear()
            self._routes[key] = ready
        call, tiles = ready
        return loaded.Route(call, tiles.rebind(plan))

    def __repr__(self) -> str:
        return f"LoadedFamily({self.plan!r})"


class BoundPlan:
    """A family bound to one step's data: ``plan`` (a :class:`DevicePlan`, fresh each step) and
    the attention through it. ``key_group``: how many of the mask's query heads share one key
    order (sorted families with key data per key/value head)."""

    def __init__(self, family_: LoadedFamily, plan: DevicePlan, key_group: int = 1):
        self.family, self.plan, self.key_group = family_, plan, key_group

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                  backend: str = "auto") -> torch.Tensor:
        """Masked attention through the bound mask, as :meth:`maskc.runtime.LoadedPlan.attention`:
        ``[B, H, N, D]`` tensors of the bound length, GQA, autograd; rows with no visible key give zeros.
        Under a trace (``torch.compile``), one call of the registered operator, the step's tensors its inputs."""
        if ops.traced(q):
            call = check_call(self.plan, q, k, v)
            _check_key_order(self, call)
            return loaded.operator_call(self.plan, call, q, k, v, scale, backend)
        route = self.family._route(self, q, k, v, backend)
        return route.run(q, k, v, route.call.scale(scale))

    __call__ = attention

    def __repr__(self) -> str:
        p = self.plan
        return f"BoundPlan({self.family.plan.kind}, {p.batch}x{p.heads}x{p.q_len}, tiles {p.block_m}x{p.block_n})"


def _check_names(kind: str, data: dict) -> None:
    """Refuse step data the family does not take, and a documents step without exactly one source."""
    allowed = STEP_DATA[kind]
    for name in data:
        if name not in allowed:
            raise BindError(f"a {kind} family binds {', '.join(allowed)}; got an unknown argument {name!r}")
    if kind == "documents":
        given = [name for name in DOCUMENT_SOURCES if data.get(name) is not None]
        if len(given) != 1:
            raise BindError(f"a documents step takes exactly one of {', '.join(DOCUMENT_SOURCES)}; got {', '.join(given) or 'none'}")
        if "n" in data and given != ["cu_seqlens"]:
            raise BindError("n (the token count) goes with cu_seqlens only")
        return
    required = {"hash_buckets": ("q_buckets", "k_buckets")}.get(kind, allowed)
    for name in required:
        if data.get(name) is None:
            raise BindError(f"a {kind} step needs {name}")


def _document_runs(data: dict, params, backend: str, check: bool) -> family.Runs:
    prefix = data.get("prefix")
    if params["prefix"] and prefix is None:
        raise BindError("this documents family has prefix=True: each step needs prefix [B, N] flags")
    if not params["prefix"] and prefix is not None:
        raise BindError("prefix flags need a documents family compiled with prefix=True")
    options = dict(causal=params["causal"], window=params["window"], prefix=prefix, backend=backend)
    if data.get("doc_ids") is not None:
        return family.documents(data["doc_ids"], **options)
    if data.get("position_ids") is not None:
        return family.documents_from_position_ids(data["position_ids"], **options)
    if "n" not in data:
        raise BindError("cu_seqlens needs n, the packed row's token count (LoadedFamily.attention takes it from q)")
    return family.documents_from_cu_seqlens(data["cu_seqlens"], data["n"], check=check, **options)


def _key_group(queries: object, q_name: str, keys: object, k_name: str) -> int:
    """Query data heads per key data head: ``[B, Hq, N]`` and ``[B, Hkv, N]`` with ``Hkv`` dividing ``Hq``."""
    for name, value in ((q_name, queries), (k_name, keys)):
        if not isinstance(value, torch.Tensor) or value.dim() != 3:
            raise BindError(f"{name} must be a [B, H, N] tensor, got {getattr(value, 'shape', type(value).__name__)}")
    (b, hq, n), (bk, hkv, nk) = queries.shape, keys.shape
    if (bk, nk) != (b, n) or hkv == 0 or hq % hkv:
        raise BindError(f"{k_name} {list(keys.shape)} must be [B, Hkv, N] for {q_name} {list(queries.shape)}, "
                        f"with Hkv (one key order per key/value head) dividing the {hq} query heads")
    return hq // hkv


def _per_query_head(keys: torch.Tensor, group: int) -> torch.Tensor:
    """Key data ``[B, Hkv, N]`` repeated for the ``group`` query heads of each key/value head (a view)."""
    b, hkv, n = keys.shape
    return keys[:, :, None].expand(b, hkv, group, n).reshape(b, hkv * group, n)


def _check_key_order(bound: BoundPlan, call: Call) -> None:
    """The dK/dV kernel walks each key/value head's query heads over one key order: a call's GQA
    groups must lie inside the groups of query heads that share one (``bound.key_group``)."""
    plan = bound.plan
    if plan.heads == 1 or plan.perm_strides[1] == 0 or bound.key_group % call.group == 0:
        return
    raise ValueError(f"the bound keys are ordered per {plan.heads // bound.key_group} key head(s), but the call groups "
                     f"{call.group} query heads per key/value head: give the key data per key/value head "
                     f"([B, {call.kv_heads}, N]) so that each group shares one key order")

