"""numba kernels of :mod:`packprep.stages.path_search` (imported lazily: numba takes a while to load)."""

from __future__ import annotations

import numpy as np

try:
    from numba import njit

    jit = njit(cache=True)
    # The dot product is most of the search's time: float32 lanes in whatever order the
    # compiler vectorises them. The order is fixed once compiled and products commute, so
    # sim(u, v) == sim(v, u) exactly and every move's gain is computed from the same values.
    jit_dot = njit(cache=True, fastmath=True)
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the stage usable without it
    def jit(fn):
        return fn

    jit_dot = jit


@jit_dot
def _sim(x, u, v):
    """The score of the pair (u, v): 0 where either is -1 (the dummy node at the path's ends).

    ``x`` is the tuple (embeddings float32 [M, D], community int64 [M], bonus float) that
    every kernel here takes as ``x``: the dot product of rows u and v, plus ``bonus`` where
    both are in one community (path_search's same-community bonus; 0 for plain cosine)."""
    if u < 0 or v < 0:
        return 0.0
    emb, community, bonus = x
    total = np.float32(0.0)
    for t in range(emb.shape[1]):
        total += emb[u, t] * emb[v, t]
    return float(total) + (bonus if community[u] == community[v] else 0.0)


@jit
def _at(path, i):
    """path[i], or -1 (the dummy node) outside 0..M-1."""
    if i < 0 or i >= len(path):
        return -1
    return path[i]


@jit
def _reverse(path, pos, lo, hi):
    while lo < hi:
        a, b = path[lo], path[hi]
        path[lo], path[hi] = b, a
        pos[b], pos[a] = lo, hi
        lo += 1
        hi -= 1


@jit
def _move_run(path, pos, s, e, q, flip):
    """Move the run path[s..e] into the gap after position q (q < s - 1 or q > e), reversed if flip."""
    length = e - s + 1
    run = path[s : e + 1].copy()
    if flip:
        run = run[::-1].copy()
    if q > e:
        for t in range(e + 1, q + 1):
            path[t - length] = path[t]
            pos[path[t - length]] = t - length
        base = q - length + 1
    else:
        for t in range(s - 1, q, -1):
            path[t + length] = path[t]
            pos[path[t + length]] = t + length
        base = q + 1
    for t in range(length):
        path[base + t] = run[t]
        pos[run[t]] = base + t


@jit
def local_search(path, x, neighbours, max_span, work_budget):
    """2-opt and Or-opt (runs of 1 to 3) on the path array, in place; returns the number of moves.
    A move may shift at most ``max_span`` positions; the search stops once ``work_budget``
    positions were shifted in all."""
    m = len(path)
    pos = np.empty(m, dtype=np.int64)
    for i in range(m):
        pos[path[i]] = i
    queue = path.copy()  # FIFO ring of dirty nodes, all dirty at first, in path order
    queued = np.ones(m, dtype=np.bool_)
    return _search(path, pos, x, neighbours, max_span, work_budget, queue, queued, m)[0]


@jit
def _search(path, pos, x, neighbours, max_span, work_budget, queue, queued, size):  # noqa: PLR0912, PLR0915
    """The search of :func:`local_search` from the ``size`` dirty documents at the head of
    ``queue``; returns (moves, total gain, lowest and highest position changed)."""
    m, k = neighbours.shape
    eps = 1e-6  # a move must gain more than rounding noise, so the search cannot cycle
    head = 0
    work, moves = 0, 0
    total, changed_lo, changed_hi = 0.0, m, -1
    touched = np.full(6, -1, dtype=np.int64)
    while size > 0 and work < work_budget:
        a = queue[head]
        head = (head + 1) % m
        size -= 1
        queued[a] = False
        moved = False
        touched[:] = -1
        for side in (1, -1):  # the pair (a, next of a), then (previous of a, a)
            if moved:
                break
            i = pos[a]
            b = _at(path, i + side)
            w_ab = _sim(x, a, b)
            for j in range(k):
                c = neighbours[a, j]
                if c < 0:
                    break
                s_ac = _sim(x, a, c)
                if s_ac <= w_ab + eps:
                    break  # neighbours are best first: no later one passes the gain criterion
                jc = pos[c]
                if c == b or c == a:
                    continue
                # 2-opt: cut at a's and c's pair on the same side, reverse between.
                d = _at(path, jc + side)
                gain = s_ac + _sim(x, b, d) - w_ab - _sim(x, c, d)
                lo, hi = (i, jc) if i < jc else (jc, i)
                if side == 1:
                    lo, hi = lo + 1, hi
                else:
                    lo, hi = lo, hi - 1
                if gain > eps and hi - lo <= max_span:
                    touched[0], touched[1], touched[2], touched[3] = a, b, c, d
                    total += gain
                    changed_lo, changed_hi = min(changed_lo, lo), max(changed_hi, hi)
                    _reverse(path, pos, lo, hi)
                    work += hi - lo + 1
                    moved = True
                # Or-opt: the run of 1..3 ending in a (extending away from b) goes next to c.
                for length in range(1, 4):
                    if moved:
                        break
                    far = i - side * (length - 1)  # the run's other end
                    if far < 0 or far >= m:
                        break
                    s, e = (far, i) if far < i else (i, far)
                    if s <= jc <= e:
                        break
                    p, n = _at(path, s - 1), _at(path, e + 1)
                    removed = _sim(x, p, n) - _sim(x, p, path[s]) - _sim(x, path[e], n)
                    other = path[far]
                    for c_side in (1, -1):  # put the run after c, or before c
                        d = _at(path, jc + c_side)
                        if d >= 0 and s <= pos[d] <= e:
                            continue
                        gain = removed + s_ac + _sim(x, other, d) - _sim(x, c, d)
                        q = jc if c_side == 1 else jc - 1  # the gap the run goes into
                        span = max(abs(q - s), abs(q - e))
                        if gain > eps and span <= max_span:
                            # after c the run must start with a; before c it must end with a
                            first = path[s]
                            flip = (first != a) if c_side == 1 else (first == a)
                            if length == 1:
                                flip = False
                            touched[0], touched[1], touched[2], touched[3] = a, other, c, d
                            touched[4], touched[5] = p, n
                            total += gain
                            changed_lo, changed_hi = min(changed_lo, s, q + 1), max(changed_hi, e, q)
                            _move_run(path, pos, s, e, q, flip)
                            work += span + length
                            moved = True
                            break
                if moved:
                    break
        if moved:
            moves += 1
            # the documents whose pairs changed are looked at again, with their new neighbours
            for v in touched:
                if v < 0:
                    continue
                for t in range(max(0, pos[v] - 1), min(m, pos[v] + 2)):
                    u = path[t]
                    if not queued[u]:
                        queue[(head + size) % m] = u
                        queued[u] = True
                        size += 1
    return moves, total, changed_lo, changed_hi


@jit
def held_karp(sim):
    m = sim.shape[0]
    full = 1 << m
    best = np.full((full, m), -np.inf)
    back = np.full((full, m), -1, dtype=np.int64)
    for v in range(m):
        best[1 << v, v] = 0.0
    for mask in range(1, full):
        for v in range(m):
            if best[mask, v] == -np.inf:
                continue
            for u in range(m):
                if mask & (1 << u):
                    continue
                value = best[mask, v] + sim[v, u]
                nxt = mask | (1 << u)
                if value > best[nxt, u] + 1e-12:
                    best[nxt, u] = value
                    back[nxt, u] = v
    end = 0
    for v in range(1, m):
        if best[full - 1, v] > best[full - 1, end] + 1e-12:
            end = v
    path = np.empty(m, dtype=np.int64)
    mask = full - 1
    for t in range(m - 1, -1, -1):
        path[t] = end
        prev = back[mask, end]
        mask ^= 1 << end
        end = prev
    return path


@jit
def _link(nxt, prv, w_next, x, u, v):
    """Make v follow u (either may be the dummy -1) and cache the pair's similarity at u."""
    if u >= 0:
        nxt[u] = v
        w_next[u] = _sim(x, u, v)
    if v >= 0:
        prv[v] = u


@jit
def or_opt_linked(path, x, neighbours, similarities, max_run):  # noqa: PLR0912, PLR0915 - one numba loop
    """Or-opt alone on a doubly linked list: a run of up to ``max_run`` moves anywhere in
    O(1), so no span cap. Rewrites ``path`` in place; returns the number of moves.

    Pairs on the path keep their similarity cached (``w_next``), and a candidate move is
    only scored with dot products once an upper bound on its gain passes: no document is
    more similar to another than to its best kNN neighbour (``similarities[:, 0]``; with
    an approximate graph this may skip a move, never make a bad one)."""
    m, k = neighbours.shape
    eps = 1e-6
    nxt = np.full(m, -1, dtype=np.int64)
    prv = np.full(m, -1, dtype=np.int64)
    w_next = np.zeros(m)
    best = np.zeros(m)
    for v in range(m):
        best[v] = max(similarities[v, 0], 0.0) if neighbours[v, 0] >= 0 else 0.0
    for i in range(m - 1):
        _link(nxt, prv, w_next, x, path[i], path[i + 1])
    queue = path.copy()
    queued = np.ones(m, dtype=np.bool_)
    head, size, moves = 0, m, 0
    run = np.empty(max_run, dtype=np.int64)
    touched = np.full(6, -1, dtype=np.int64)
    while size > 0:
        a = queue[head]
        head = (head + 1) % m
        size -= 1
        queued[a] = False
        moved = False
        for side in (1, -1):
            if moved:
                break
            b = nxt[a] if side == 1 else prv[a]
            w_ab = w_next[a] if side == 1 else (w_next[b] if b >= 0 else 0.0)
            for j in range(k):
                c = neighbours[a, j]
                if c < 0 or similarities[a, j] <= w_ab + eps:
                    break
                if c == b or c == a:
                    continue
                # scored with _sim, not the kNN figure: every gain then comes from one
                # consistent set of values, so the search cannot cycle whatever is passed in
                s_ac = _sim(x, a, c)
                run[0] = a
                for length in range(1, max_run + 1):
                    if length > 1:
                        step = prv[run[length - 2]] if side == 1 else nxt[run[length - 2]]
                        if step < 0:
                            break
                        run[length - 1] = step
                    if c == run[length - 1]:
                        break
                    other = run[length - 1]
                    # in path order the run is first..last; p before it, n after it
                    first, last = (other, a) if side == 1 else (a, other)
                    p, n = prv[first], nxt[last]
                    cut = (w_next[p] if p >= 0 else 0.0) + w_next[last]
                    s_pn = -1.0  # computed when a candidate needs it
                    for c_side in (1, -1):
                        d = nxt[c] if c_side == 1 else prv[c]
                        inside = False
                        for t in range(length):
                            if run[t] == d:
                                inside = True
                        if inside:
                            continue
                        w_cd = w_next[c] if c_side == 1 else (w_next[d] if d >= 0 else 0.0)
                        bound_pn = min(best[p], best[n]) if p >= 0 and n >= 0 else 0.0
                        bound_od = min(best[other], best[d]) if d >= 0 else 0.0
                        if bound_pn - cut + s_ac + bound_od - w_cd <= eps:
                            continue
                        if s_pn < -0.5:
                            s_pn = _sim(x, p, n)
                        gain = s_pn - cut + s_ac + _sim(x, other, d) - w_cd
                        if gain > eps:
                            _link(nxt, prv, w_next, x, p, n)
                            if c_side == 1:
                                _link(nxt, prv, w_next, x, c, a)
                                for t in range(length - 1):
                                    _link(nxt, prv, w_next, x, run[t], run[t + 1])
                                _link(nxt, prv, w_next, x, other, d)
                            else:
                                _link(nxt, prv, w_next, x, d, other)
                                for t in range(length - 1):
                                    _link(nxt, prv, w_next, x, run[t + 1], run[t])
                                _link(nxt, prv, w_next, x, a, c)
                            touched[0], touched[1], touched[2] = a, other, c
                            touched[3], touched[4], touched[5] = d, p, n
                            moved = True
                            moves += 1
                            break
                    if moved:
                        break
                if moved:
                    break
        if moved:
            for v in touched:
                for u in (v, nxt[v] if v >= 0 else -1, prv[v] if v >= 0 else -1):
                    if u >= 0 and not queued[u]:
                        queue[(head + size) % m] = u
                        queued[u] = True
                        size += 1
    start = 0
    while prv[start] >= 0:
        start = prv[start]
    for i in range(m):
        path[i] = start
        start = nxt[start]
    return moves


@jit
def kicked_search(path, x, neighbours, max_span, kicks, width):
    """Iterated local search, in place: for each row of ``kicks`` (start, three cut points
    inside a stretch of ``width``), swap two adjacent pieces of that stretch (a double
    bridge, which 2-opt and short Or-opt moves cannot undo in one step), search again
    from the documents around it, and keep the result only if the path gained; returns
    how many kicks were kept."""
    m = len(path)
    pos = np.empty(m, dtype=np.int64)
    for i in range(m):
        pos[path[i]] = i
    queue = np.empty(m, dtype=np.int64)
    queued = np.zeros(m, dtype=np.bool_)
    saved = path.copy()
    kept = 0
    for row in range(kicks.shape[0]):
        s, a, b, c = kicks[row, 0], kicks[row, 1], kicks[row, 2], kicks[row, 3]
        before = 0.0
        for i in range(s - 1, s + width):
            before += _sim(x, _at(path, i), _at(path, i + 1))
        piece = path[s : s + width].copy()
        t = s
        for part in ((0, a), (b, c), (a, b), (c, width)):
            for i in range(part[0], part[1]):
                path[t] = piece[i]
                pos[path[t]] = t
                t += 1
        after = 0.0
        for i in range(s - 1, s + width):
            after += _sim(x, _at(path, i), _at(path, i + 1))
        size = 0
        for i in range(max(0, s - 1), min(m, s + width + 1)):
            queue[size] = path[i]
            queued[path[i]] = True
            size += 1
        moves, gain, lo, hi = _search(path, pos, x, neighbours, max_span, 1 << 62, queue, queued, size)
        lo, hi = min(lo, s), max(hi, s + width - 1)
        if after - before + gain > 1e-6:
            kept += 1
            saved[lo : hi + 1] = path[lo : hi + 1]
        else:
            path[lo : hi + 1] = saved[lo : hi + 1]
            for i in range(lo, hi + 1):
                pos[path[i]] = i
    return kept
