"""Explorer at 1M-10M materials: top-50 retrieval (approximate and exact), lasso, datashader, hover.

    python benchmarks/explore_scale.py [--n 10000000] [--dim 128] [--queries 50] [--random-n 0]

Synthetic data (the corpus is ~18k materials today; this checks the design holds at 1M-10M). Every
figure is printed beside the exact or naive path, measured in the same run:

* retrieval gallery: N x 128 float16 unit vectors from a mixture of 4,000 von Mises-Fisher-like clusters
  (centres grouped under 60 broader families; cluster sizes log-normal, so some clusters are 20x others;
  per-cluster spread drawn so that a member's cosine to its centre is ~0.75-0.93 and its top-50
  neighbours' cosines ~0.6-0.9, like trained 128-d contrastive embeddings, where crystals of one
  chemistry/structure family cluster tightly). Generated in blocks (bounded memory). Queries are fresh
  draws from the same mixture (not gallery rows). Why not pure random unit vectors: in 128-d they are
  all nearly orthogonal (cosines ~N(0, 1/128)), so the "top 50" are barely nearer than any other row;
  no index can do better than a scan there (every list must be probed), and real embeddings are nothing
  like that. That worst case is reported with ``--random-n M`` (M random vectors, same index settings).
  - approximate: ``TopKIndex(backend="ivfpq")`` (IVF lists + 4-bit fast-scan PQ codes, exact re-ranking
    of 3000 candidates from the float16 vectors, nprobe 16): build time, index memory, median/p90 ms per query
    (one query per call, as the app asks), recall@50 against the exact search, also with a filter.
    Target: <= 20 ms per query at recall@50 >= 0.95.
  - exact: ``TopKIndex(backend="fp16")`` (faiss IndexScalarQuantizer QT_fp16: what the app uses up to
    ANN_MIN_ROWS), its per-query time, and (up to 2M rows) faiss IndexFlatIP on a float32 copy and naive
    numpy (float32 matmul + full argsort), whose results are checked identical to the fp16 scan.
* map: N 2-D points from a mixture of 40 anisotropic Gaussian clusters (UMAP-like clumps); a 200-vertex
  star-shaped lasso over the middle of the map. GridIndex2D vs shapely.contains_xy over every point (a
  prepared polygon), results checked identical. Target: <= 30 ms.
* datashader: Canvas(800 x 800).points(...) count aggregation of the N points (+ shading), warm (the
  first call compiles with numba and is reported separately). Target: <= 150 ms.
* hover, at min(N, 1M) points: the app's hover tooltips are Bokeh's, in the browser, over an invisible
  layer of at most 3,000 points that HoloViews' ``decimate`` re-samples on the server at every pan/zoom
  (app/views/map.py); a click focuses the nearest material (``AppState.nearest``: argmin of the squared
  distance over every point, app/state.py). Both server-side operations are timed, beside the full
  undecimated frame a naive layer would send, and beside ``ViewportSampler`` (mlcm_core/explore/index.py:
  the same uniform sample of the points in view, in O(3000 / fraction in view) instead of O(N)).
  Target: <= 50 ms.

Timings are medians (and p90) of repeated runs on this machine; other processes share its cores, so
the load average is printed too (at the start and before each section). Peak RSS is printed at the end
(~7 GB at 10M: the float16 gallery and the exact index's copy of it are 2.5 GB each).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np

BLOCK = 1 << 17


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    out = None
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return statistics.median(ts), ts[min(len(ts) - 1, int(0.9 * len(ts)))], out


def _line(name: str, med: float, p90: float, target: float | None = None) -> str:
    verdict = "" if target is None else (f"  target {target:.0f} ms: " + ("OK" if med <= target else "MISSED"))
    return f"  {name:<48s} median {med:8.1f} ms   p90 {p90:8.1f} ms{verdict}"


def _load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class ClusteredUnitVectors:
    """A mixture of von Mises-Fisher-like clusters on the unit sphere (see the module docstring).

    A member of cluster c is normalise(mu_c + s_c * g / sqrt(D)), g ~ N(0, I): its cosine to mu_c is
    ~1 / sqrt(1 + s_c^2) (s_c in [0.4, 0.9]: 0.74-0.93). Centres: normalise(family + 0.8 g / sqrt(D)).
    """

    def __init__(self, dim: int, n_clusters: int = 4000, n_families: int = 60, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        families = _unit(rng.standard_normal((n_families, dim)))
        fam = rng.integers(0, n_families, n_clusters)
        centres = families[fam] + 0.8 * rng.standard_normal((n_clusters, dim)) / np.sqrt(dim)
        self.centres = _unit(centres).astype(np.float32)
        self.spread = rng.uniform(0.4, 0.9, n_clusters).astype(np.float32)
        w = rng.lognormal(0.0, 1.0, n_clusters)
        self.weights = w / w.sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = rng.choice(len(self.weights), n, p=self.weights)
        g = rng.standard_normal((n, self.dim), dtype=np.float32)
        g *= (self.spread[c] / np.sqrt(self.dim))[:, None]
        g += self.centres[c]
        return _unit(g)

    def fill(self, out: np.ndarray, seed: int) -> None:
        """Fill a float16 (N, D) array in blocks (bounded float32 temporaries)."""
        for i, s in enumerate(range(0, len(out), BLOCK)):
            rng = np.random.default_rng([seed, i])
            out[s : s + BLOCK] = self.sample(min(BLOCK, len(out) - s), rng)


def _random_fill(out: np.ndarray, seed: int) -> None:
    for i, s in enumerate(range(0, len(out), BLOCK)):
        rng = np.random.default_rng([seed, i])
        out[s : s + BLOCK] = _unit(rng.standard_normal((min(BLOCK, len(out) - s), out.shape[1]), dtype=np.float32))


def bench_retrieval(n: int, dim: int, n_queries: int, k: int = 50, kind: str = "clustered", threads: int = 1) -> None:
    import faiss

    from mlcm_core.explore.index import TopKIndex, recall_at_k

    faiss.omp_set_num_threads(threads)

    print(f"\n== top-{k} retrieval, {n:,} x {dim} float16 gallery, {kind} unit vectors ({_load()}) ==")
    t0 = time.perf_counter()
    gallery = np.empty((n, dim), np.float16)
    if kind == "clustered":
        mix = ClusteredUnitVectors(dim)
        mix.fill(gallery, seed=1)
        queries = mix.sample(n_queries, np.random.default_rng(2)).astype(np.float32)
    else:
        _random_fill(gallery, seed=1)
        queries = _unit(np.random.default_rng(2).standard_normal((n_queries, dim), dtype=np.float32))
    print(f"  gallery generated in {time.perf_counter() - t0:.1f} s ({gallery.nbytes / 2**30:.2f} GiB float16)")

    t0 = time.perf_counter()
    ann = TopKIndex(gallery, backend="ivfpq")
    t_ann = time.perf_counter() - t0
    mem = ann.memory_bytes()
    print(f"  faiss threads: {threads} (builds and the main lines)")
    print(f"  approximate index build (ivfpq: nlist {ann.nlist}, nprobe {ann.nprobe}, pool {ann.pool}): {t_ann:.1f} s; "
          f"index {mem['index'] / 2**20:.0f} MiB + the float16 gallery it re-ranks from "
          f"{mem['gallery'] / 2**20:.0f} MiB (shared with the explorer, not a copy)")
    t0 = time.perf_counter()
    exact = TopKIndex(gallery, backend="fp16")
    t_exact = time.perf_counter() - t0
    print(f"  exact index build (fp16 scan): {t_exact:.1f} s; index {exact.memory_bytes()['index'] / 2**20:.0f} MiB "
          f"(a second copy of the gallery)")

    t0 = time.perf_counter()
    ref_s, ref_i = exact.search(queries, k)  # batched ground truth
    print(f"  exact ground truth for {n_queries} queries (one batched scan): {time.perf_counter() - t0:.1f} s; "
          f"cosine of the 1st/50th neighbour: median {np.median(ref_s[:, 0]):.3f}/{np.median(ref_s[:, -1]):.3f}")

    it = iter(range(10**9))
    ann.search(queries[0], k)
    med, p90, _ = _time(lambda: ann.search(queries[next(it) % n_queries], k), n_queries)
    got = np.concatenate([ann.search(q, k)[1] for q in queries])
    rec = recall_at_k(got, ref_i)
    print(_line(f"approximate (ivfpq + exact re-rank)", med, p90, 20) + f"   recall@{k} {rec:.4f}"
          + ("  (>= 0.95: OK)" if rec >= 0.95 else "  (>= 0.95: MISSED)"))
    # the same scores as the exact scan for the rows both return (re-ranking is exact)
    s_ann, i_ann = ann.search(queries[:3], k)
    same = all(np.allclose(s_ann[j][np.isin(i_ann[j], ref_i[j])], ref_s[j][np.isin(ref_i[j], i_ann[j])], atol=1e-5)
               for j in range(3))
    print(f"  re-ranked scores equal the exact scan's: {same}")
    nprobe0, pool0 = ann.nprobe, ann.pool
    for nprobe, pool in ((16, 1000), (16, 2000), (64, 3000), (16, 5000)):
        ann.nprobe, ann.pool = nprobe, pool
        m, p, _ = _time(lambda: ann.search(queries[next(it) % n_queries], k), n_queries)
        r = recall_at_k(np.concatenate([ann.search(q, k)[1] for q in queries]), ref_i)
        print(_line(f"  nprobe {nprobe}, pool {pool}", m, p) + f"   recall@{k} {r:.4f}")
    ann.nprobe, ann.pool = nprobe0, pool0

    # filters keeping 20% and 1% of the rows (random rows: the hardest case for IVF lists)
    fq = queries[:10]
    masks = {}
    for frac in (0.2, 0.01):
        mask = masks[frac] = np.random.default_rng(3).random(n) < frac
        ref_f = exact.search(fq, k, mask=mask)[1]
        med, p90, _ = _time(lambda: ann.search(fq[next(it) % len(fq)], k, mask=mask), len(fq))
        got_f = np.concatenate([ann.search(q, k, mask=mask)[1] for q in fq])
        print(_line(f"approximate, filter keeping {frac:.0%} of rows", med, p90, 20)
              + f"   recall@{k} {recall_at_k(got_f, ref_f):.4f}, only eligible rows: {bool(mask[got_f].all())}")

    n_exact = n_queries if n <= 2_000_000 else 5
    for nt in sorted({1, os.cpu_count() or 1}):
        faiss.omp_set_num_threads(nt)
        exact.search(queries[0], k)
        m, p, _ = _time(lambda: exact.search(queries[next(it) % n_queries], k), n_exact)
        print(_line(f"exact fp16 scan, {nt} thread(s)", m, p, 20))
        m, p, _ = _time(lambda: ann.search(queries[next(it) % n_queries], k), n_queries)
        print(_line(f"approximate, {nt} thread(s)", m, p, 20))
    faiss.omp_set_num_threads(threads)
    m, p, _ = _time(lambda: exact.search(fq[next(it) % len(fq)], k, mask=masks[0.2]), min(n_exact, len(fq)))
    print(_line("exact fp16 scan, filter keeping 20% of rows", m, p, 20))
    if n <= 2_000_000:
        flat = TopKIndex(gallery, backend="flat")
        m, p, _ = _time(lambda: flat.search(queries[next(it) % n_queries], k), n_queries)
        print(_line("exact faiss IndexFlatIP (float32 copy)", m, p))
        del flat
        g32 = gallery.astype(np.float32)

        def naive() -> object:
            q = queries[next(it) % n_queries]
            s = g32 @ q
            order = np.argsort(-s)[:k]
            return s[order], order

        m, p, _ = _time(naive, max(3, n_queries // 10))
        print(_line("naive numpy: float32 matmul + full argsort", m, p))
        same = sum(set(np.argsort(-(g32 @ q), kind="stable")[:k].tolist()) == set(ref_i[j].tolist())
                   for j, q in enumerate(queries[:5]))
        print(f"  exact fp16 top-{k} == numpy argsort top-{k}: {same}/5 queries")
        del g32
    else:
        print("  (IndexFlatIP and naive numpy skipped above 2M rows: their float32 copy alone is "
              f"{n * dim * 4 / 2**30:.1f} GiB)")
    del ann, exact, gallery


def _star(n: int, cx: float, cy: float, r: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = r * (0.65 + 0.35 * np.sin(7 * ang)) * rng.uniform(0.9, 1.0, n)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)


def _map_points(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    centres = rng.uniform(-10, 10, (40, 2))
    scales = rng.uniform(0.2, 1.5, (40, 2))
    out = np.empty((n, 2))
    for s in range(0, n, 1 << 20):  # bounded temporaries
        which = rng.integers(0, 40, min(1 << 20, n - s))
        out[s : s + len(which)] = centres[which] + scales[which] * rng.standard_normal((len(which), 2))
    return out


def bench_lasso(n: int, repeats: int = 15) -> tuple[np.ndarray, object]:
    import shapely

    from mlcm_core.explore.index import GridIndex2D

    print(f"\n== lasso: 200-vertex polygon over {n:,} map points ({_load()}) ==")
    xy = _map_points(n)
    t0 = time.perf_counter()
    grid = GridIndex2D(xy)
    print(f"  grid build: {(time.perf_counter() - t0) * 1e3:.0f} ms ({grid.shape[0]} x {grid.shape[1]} cells)")
    polys = [_star(200, *np.random.default_rng(s).uniform(-4, 4, 2), np.random.default_rng(s).uniform(3, 8), s)
             for s in range(repeats)]
    it = iter(range(10**9))
    grid.select(polys[0])
    med, p90, _ = _time(lambda: grid.select(polys[next(it) % repeats]), repeats)
    print(_line("GridIndex2D.select (ascending indices)", med, p90, 30))
    med, p90, _ = _time(lambda: grid.select_mask(polys[next(it) % repeats]), repeats)
    print(_line("GridIndex2D.select_mask (bool mask)", med, p90, 30))

    def plain() -> object:
        poly = shapely.Polygon(polys[next(it) % repeats])
        shapely.prepare(poly)
        return np.flatnonzero(shapely.contains_xy(poly, xy[:, 0], xy[:, 1]))

    med, p90, _ = _time(plain, max(3, repeats // 3) if n <= 2_000_000 else 3)
    print(_line("shapely.contains_xy over all points (prepared)", med, p90))
    n_check = 5 if n <= 2_000_000 else 2
    agree = all(np.array_equal(grid.select(p), np.flatnonzero(shapely.contains_xy(shapely.Polygon(p), xy[:, 0], xy[:, 1])))
                for p in polys[:n_check])
    sizes = [len(grid.select(p)) for p in polys[:n_check]]
    print(f"  identical selections: {agree} ({n_check} polygons, selected {min(sizes):,}..{max(sizes):,} points)")
    return xy, grid


def bench_datashader(xy: np.ndarray, grid: object = None, repeats: int = 10) -> None:
    import datashader as ds
    import datashader.transfer_functions as tf
    import pandas as pd

    print(f"\n== datashader: {len(xy):,} points on an 800 x 800 canvas ({_load()}) ==")
    df = pd.DataFrame({"x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32)})
    x_range = (float(df.x.min()), float(df.x.max()))
    y_range = (float(df.y.min()), float(df.y.max()))
    canvas = ds.Canvas(plot_width=800, plot_height=800, x_range=x_range, y_range=y_range)
    t0 = time.perf_counter()
    tf.shade(canvas.points(df, "x", "y", agg=ds.count()), how="eq_hist")
    print(f"  first call (numba compilation): {(time.perf_counter() - t0) * 1e3:.0f} ms")
    med, p90, _ = _time(lambda: canvas.points(df, "x", "y", agg=ds.count()), repeats)
    print(_line("rasterize (count aggregation)", med, p90, 150))
    med, p90, _ = _time(lambda: tf.shade(canvas.points(df, "x", "y", agg=ds.count()), how="eq_hist"), repeats)
    print(_line("rasterize + shade (eq_hist)", med, p90, 150))
    # a zoomed-in viewport (the app re-aggregates the current range on every pan/zoom)
    zoom = ds.Canvas(plot_width=800, plot_height=800, x_range=(-5.0, 5.0), y_range=(-5.0, 5.0))
    med, p90, _ = _time(lambda: tf.shade(zoom.points(df, "x", "y", agg=ds.count()), how="eq_hist"), repeats)
    print(_line("rasterize + shade, zoomed viewport", med, p90, 150))
    if grid is not None:
        # the same viewport from the points sorted by grid column: only the columns in view are aggregated
        dfs = df.iloc[grid.order].reset_index(drop=True)
        ny = grid.shape[1]

        def zoomed_sorted() -> object:
            (ix0, ix1), _ = grid._cell_of(np.array([-5.0, 5.0]), np.array([0.0, 0.0]))
            part = dfs.iloc[grid.offsets[ix0 * ny] : grid.offsets[(ix1 + 1) * ny]]
            return tf.shade(zoom.points(part, "x", "y", agg=ds.count()), how="eq_hist")

        med, p90, _ = _time(zoomed_sorted, repeats)
        full = tf.shade(zoom.points(df, "x", "y", agg=ds.count()), how="eq_hist")
        same = np.array_equal(zoomed_sorted().data, full.data)
        print(_line("  same, points sorted by grid column (slice)", med, p90, 150) + f"   identical image: {same}")


def bench_hover(xy: np.ndarray, repeats: int = 15) -> None:
    import holoviews as hv
    import pandas as pd
    from holoviews.operation import decimate

    n = len(xy)
    print(f"\n== hover and click on {n:,} map points ({_load()}) ==")
    ids = np.char.add("mat-", np.arange(n).astype(str)).astype(object)
    frame = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "id": ids,
                          "formula": np.where(np.arange(n) % 2, "NaCl", "SiO2").astype(object)})
    points = hv.Points(frame, ["x", "y"], ["id", "formula"])
    rng = np.random.default_rng(5)
    views = [(c - w, c + w, d - w, d + w) for c, d, w in zip(rng.uniform(-4, 4, repeats), rng.uniform(-4, 4, repeats),
                                                               rng.uniform(0.5, 12, repeats))]
    it = iter(range(10**9))

    def hover_layer() -> object:
        x0, x1, y0, y1 = views[next(it) % repeats]
        return decimate(points, x_range=(x0, x1), y_range=(y0, y1), max_samples=3000, dynamic=False)

    out = hover_layer()
    med, p90, _ = _time(hover_layer, repeats)
    print(_line("hover layer: decimate to <= 3000 points in view", med, p90, 50) + f"   ({len(out)} points sent)")

    def full_layer() -> object:
        x0, x1, y0, y1 = views[next(it) % repeats]
        return points.select(x=(x0, x1), y=(y0, y1))

    med, p90, out = _time(full_layer, max(3, repeats // 3))
    print(_line("naive: every point in view (no decimation)", med, p90) + f"   ({len(out):,} points would be sent)")
    from mlcm_core.explore.index import ViewportSampler

    t0 = time.perf_counter()
    sampler = ViewportSampler(xy)
    print(f"  ViewportSampler build: {(time.perf_counter() - t0) * 1e3:.0f} ms")

    def sampled_layer() -> object:
        x0, x1, y0, y1 = views[next(it) % repeats]
        return frame.iloc[sampler.sample((x0, x1), (y0, y1), 3000)]

    med, p90, out = _time(sampled_layer, repeats)
    print(_line("hover layer: ViewportSampler to <= 3000 points", med, p90, 50) + f"   ({len(out)} points sent)")
    fx, fy, ids = frame["x"].to_numpy(), frame["y"].to_numpy(), frame["id"]
    clicks = rng.uniform(-8, 8, (repeats, 2))

    def nearest() -> object:  # AppState.nearest
        x, y = clicks[next(it) % repeats]
        d2 = (fx - x) ** 2 + (fy - y) ** 2
        return str(ids.iloc[int(np.argmin(d2))])

    med, p90, _ = _time(nearest, repeats)
    print(_line("click: nearest material (argmin over all points)", med, p90, 50))


def _peak_rss() -> str:
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--random-n", type=int, default=0, help="also retrieval on this many pure random vectors")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="faiss threads for builds and the main retrieval lines (the default 1: on a machine whose "
                             "cores are busy, faiss's OpenMP threads wait on each other; 2 threads trained the IVF "
                             "8x slower than 1 here)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"cores: {os.cpu_count()}, {_load()}")
    if not args.skip_retrieval:
        bench_retrieval(args.n, args.dim, args.queries, threads=args.threads)
        print(f"  ({_peak_rss()})")
    if args.random_n:
        bench_retrieval(args.random_n, args.dim, args.queries, kind="random", threads=args.threads)
    xy, grid = bench_lasso(args.n)
    bench_datashader(xy, grid)
    del grid
    bench_hover(xy[: min(len(xy), 1_000_000)])
    print(f"\n{_peak_rss()}, total {time.perf_counter() - t0:.0f} s, {_load()}")


if __name__ == "__main__":
    main()
