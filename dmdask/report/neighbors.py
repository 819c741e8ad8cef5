"""Report sections of the similarity analyses (:mod:`dmdask.similarity`): nearest neighbours
as image grids beside the representation's nearest examples, with label agreement rates; and
train–test leakage candidates: the top-ranked pairs as images, and against a planted ground
truth the recall and precision curves over the number of candidates (the paper's Figure 12)
and the precision–recall curve of each global ranking."""

from __future__ import annotations

import numpy as np

from .html import _esc, _figure, _fmt, _malformed, _missing, _new_fig, show_image
from .images import usable_images

__all__ = ["sec_leakage", "sec_neighbors"]

_POS, _NEG, _NEAR, _TGT = "#1a7f37", "#d1242f", "#1f6feb", "#0b3d91"
_METHOD_COLORS = {"datamodels": "#bc4c00", "representation": "#1f6feb"}
_SHORT = {"datamodels": "DM", "representation": "rep."}


def _spread(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def _blank(ax, text: str = "") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if text:
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, transform=ax.transAxes)


def _load(src, which: str, idx) -> dict[int, np.ndarray] | None:
    idx = np.unique(np.asarray([i for i in idx if i >= 0], np.int64))
    if src is None or (which == "target" and src.n_target is None):
        return None
    got = src.get(which, idx) if idx.size else []
    return {int(i): got[n] for n, i in enumerate(idx)}


def _label(ds, name: str, t: int, r: int | None = None) -> str:
    if name not in ds.variables:
        return ""
    v = ds[name].values[t] if r is None else ds[name].values[t, r]
    return "" if int(v) < 0 else f"\nlabel {int(v)}"


def _agreement(nn) -> list[tuple[str, float, int]]:
    """(kind, share of neighbours with the target's label, neighbours counted)."""
    if "target_label" not in nn.coords:
        return []
    tl = np.asarray(nn["target_label"].values)[:, None]
    out = []
    for kind in ("positive", "negative", "nearest"):
        if f"{kind}_label" not in nn:
            continue
        lab = np.asarray(nn[f"{kind}_label"].values)
        ok = lab >= 0
        out.append((kind, float((lab == tl)[ok].mean()) if ok.any() else float("nan"),
                    int(ok.sum())))
    return out


def sec_neighbors(nn, ds=None, images=None, *, n_targets: int = 4, show: int = 4) -> str:
    """Per target (a few, spread over the Dataset) its image, its top positive and negative
    datamodel neighbours and the representation's nearest, titled with weight or distance
    and label; and the label agreement rates of each kind of neighbour."""
    if nn is None:
        return _missing("No neighbours given. Run <code>dmdask neighbors DATAMODELS --store "
                        "STORE --representation --out nn.zarr</code> and pass "
                        "<code>neighbors=</code> (or <code>--neighbors</code>).")
    bad = _malformed(nn, "target", ("positive", "positive_weight", "negative",
                                    "negative_weight"), "neighbours Dataset")
    if bad:
        return bad
    kinds = [("positive", "positive_weight", _POS), ("negative", "negative_weight", _NEG)]
    if "nearest" in nn:
        kinds.append(("nearest", "nearest_distance", _NEAR))
    show = min(show, nn.sizes["rank"])
    rows = _agreement(nn)
    table = ""
    if rows:
        table = ("<table id='neighbors-agreement'><thead><tr><th class='l'>neighbours</th>"
                 "<th>share with the target's label</th><th>neighbours counted</th></tr>"
                 "</thead><tbody>"
                 + "".join(f"<tr><td class='l'>{_esc(k)}</td><td>{_fmt(s)}</td><td>{n}</td>"
                           "</tr>" for k, s, n in rows) + "</tbody></table>")
    src, note = usable_images(ds, images)
    if src is None:
        return _missing(note) + table
    picks = _spread(nn.sizes["target"], n_targets)
    tnames = np.asarray(nn["target"].values, np.int64)
    idx = {k: np.asarray(nn[k].values, np.int64)[picks, :show] for k, _, _ in kinds}
    try:
        tr = _load(src, "train", np.concatenate([v.ravel() for v in idx.values()]))
        tg = _load(src, "target", tnames[picks])
    except Exception as e:  # noqa: BLE001 - the job's own code: its failure is a note
        return _missing(f"The images could not be read from {_esc(src.source)} "
                        f"({_esc(type(e).__name__)}: {_esc(e)}).") + table

    ncol = 1 + show * len(kinds)
    fig = _new_fig(1.0 * ncol + 0.4, 1.5 * picks.size)
    axes = np.atleast_2d(fig.subplots(picks.size, ncol))
    for r, t in enumerate(picks):
        ax = axes[r, 0]
        if tg is not None:
            show_image(ax, tg[int(tnames[t])])
        else:
            _blank(ax, "no image")
        lab = (f"\nlabel {int(nn['target_label'].values[t])}"
               if "target_label" in nn.coords else "")
        ax.set_title(f"target {tnames[t]}{lab}", fontsize=8, color=_TGT)
        for c, (kind, val, color) in enumerate(kinds):
            for i in range(show):
                ax = axes[r, 1 + c * show + i]
                j = int(idx[kind][r, i])
                if j < 0:
                    ax.axis("off")
                    continue
                show_image(ax, tr[j])
                v = float(nn[val].values[t, i])
                head = f"d {v:.2f}" if kind == "nearest" else f"{v:+.3f}"
                ax.set_title(head + _label(nn, f"{kind}_label", t, i), fontsize=8,
                             color=color)
    parts = ["largest positive weights (green)", "most negative weights (red)"]
    if "nearest" in nn:
        parts.append("nearest in the job's penultimate layer (blue, titled by L2 distance)")
    cap = (f"For {picks.size} targets (first column): their {show} training neighbours with "
           + ", ".join(parts) + ", each with its training label. "
           f"Images: {_esc(src.source)}.")
    return _figure("fig-neighbors", fig, cap, "datamodel and representation neighbours") + table


def _curves(leak) -> str:
    fig = _new_fig(9.6, 3.3)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    c = np.asarray(leak["n_candidates"].values)
    for m in leak["source"].values:
        col = _METHOD_COLORS.get(str(m))
        ax1.plot(c, leak["recall"].sel(source=m).values, "o-", ms=3, color=col, label=str(m))
        ax2.plot(c, leak["precision"].sel(source=m).values, "o-", ms=3, color=col,
                 label=str(m))
        pfx = "" if str(m) == "datamodels" else "rep_"
        if f"{pfx}pair_recall" in leak:
            ap = float(leak["average_precision"].sel(source=m))
            ax3.plot(leak[f"{pfx}pair_recall"].values, leak[f"{pfx}pair_precision"].values,
                     color=col, label=f"{m} (AP {_fmt(ap)})")
    # precision over C is at most (planted pairs) / (targets): its own scale, or it is a flat
    # line at 0; recall and the PR curve live on [0, 1]
    top = np.nanmax(np.concatenate([[1e-3], np.ravel(leak["precision"].values)]))
    ax2.set_ylim(0, 1.15 * top)
    ax1.set_ylim(-0.02, 1.02)
    ax3.set_ylim(-0.02, 1.02)
    for ax, xl, yl in ((ax1, "candidates per target", "recall of planted pairs"),
                       (ax2, "candidates per target", "precision"),
                       (ax3, "recall (global ranking)", "precision (global ranking)")):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    at = leak.attrs
    cap = (f"Planted train–test pairs ({at.get('n_planted_covered', '?')} of "
           f"{at.get('n_planted', '?')} with a datamodel; ground truth from "
           f"{_esc(at.get('planted_source', '?'))}): recall (left) and precision (middle) of "
           "the top-c candidates per target, for c = 1.."
           f"{int(c[-1])} (the paper's Figure 12 comparison), and precision against recall "
           "along each global ranking of candidate pairs (right).")
    return _figure("fig-leakage-curves", fig, cap, "leakage recall and precision curves")


def _curve_table(leak) -> str:
    c = np.asarray(leak["n_candidates"].values)
    cols = sorted({1, min(5, int(c[-1])), int(c[-1])})
    head = "".join(f"<th>recall@{k}</th>" for k in cols) + "".join(
        f"<th>precision@{k}</th>" for k in cols)
    body = ""
    for m in leak["source"].values:
        s = leak.sel(source=m)
        body += (f"<tr><td class='l'>{_esc(m)}</td>"
                 + "".join(f"<td>{_fmt(s['recall'].sel(n_candidates=k))}</td>" for k in cols)
                 + "".join(f"<td>{_fmt(s['precision'].sel(n_candidates=k))}</td>"
                           for k in cols)
                 + f"<td>{_fmt(s['average_precision'])}</td></tr>")
    return (f"<table id='leakage-curves'><thead><tr><th class='l'>candidates from</th>{head}"
            f"<th>average precision</th></tr></thead><tbody>{body}</tbody></table>")


def _top_pairs(leak, src, n_pairs: int) -> str:
    methods = [("datamodels", "pair", "pair_score", "score")]
    if "rep_pair_target" in leak:
        methods.append(("representation", "rep_pair", "rep_pair_distance", "d"))
    shown = {m: min(n_pairs, leak.sizes.get(dim, 0)) for m, dim, _, _ in methods}
    pfx = {"datamodels": "pair", "representation": "rep_pair"}
    tgt = [np.asarray(leak[f"{pfx[m]}_target"].values[:shown[m]], np.int64)
           for m, *_ in methods]
    cand = [np.asarray(leak[f"{pfx[m]}_candidate"].values[:shown[m]], np.int64)
            for m, *_ in methods]
    rows = []
    for (m, dim, val, _), ts, js in zip(methods, tgt, cand, strict=True):
        vals = leak[val].values[:shown[m]]
        hit = (leak[f"{dim}_planted"].values[:shown[m]] if f"{dim}_planted" in leak
               else np.zeros(shown[m], bool))
        for i in range(shown[m]):
            rows.append(f"<tr><td class='l'>{_esc(m)}</td><td>{i + 1}</td><td>{ts[i]}</td>"
                        f"<td>{js[i]}</td><td>{_fmt(vals[i])}</td>"
                        f"<td>{'yes' if hit[i] else ''}</td></tr>")
    table = ("<table id='leakage-pairs'><thead><tr><th class='l'>ranking</th><th>#</th>"
             "<th>target</th><th>train</th><th>score / distance</th><th>planted</th></tr>"
             f"</thead><tbody>{''.join(rows)}</tbody></table>")
    if src is None or not any(shown.values()):
        return table
    try:
        tr = _load(src, "train", np.concatenate(cand))
        tg = _load(src, "target", np.concatenate(tgt))
    except Exception as e:  # noqa: BLE001 - the job's own code: its failure is a note
        return _missing(f"The images could not be read from {_esc(src.source)} "
                        f"({_esc(type(e).__name__)}: {_esc(e)}).") + table

    ncol = max(shown.values())
    fig = _new_fig(1.0 * ncol + 0.6, 1.55 * 2 * len(methods))
    axes = np.atleast_2d(fig.subplots(2 * len(methods), ncol))
    for r, ((m, dim, val, short), ts, js) in enumerate(zip(methods, tgt, cand, strict=True)):
        vals = leak[val].values
        hit = leak[f"{dim}_planted"].values if f"{dim}_planted" in leak else None
        for i in range(ncol):
            top, bot = axes[2 * r, i], axes[2 * r + 1, i]
            if i >= shown[m]:
                top.axis("off")
                bot.axis("off")
                continue
            if tg is not None:
                show_image(top, tg[int(ts[i])])
            else:
                _blank(top, "no image")
            top.set_title(f"{_SHORT[m]} #{i + 1}\ntarget {ts[i]}", fontsize=7, color=_TGT)
            show_image(bot, tr[int(js[i])])
            mark = "\nplanted" if hit is not None and hit[i] else ""
            bot.set_title(f"{short} {vals[i]:.3g}{mark}", fontsize=7,
                          color=_METHOD_COLORS[m] if not mark else _POS)
    cap = (f"The top-ranked candidate pairs of each global ranking: target (upper image) and "
           "candidate training example (lower), titled by score (datamodels: weight / L2 norm "
           "of the target's weights) or L2 distance (representation); pairs of the planted "
           f"ground truth marked. Images: {_esc(src.source)}.")
    return _figure("fig-leakage-pairs", fig, cap, "top leakage candidate pairs") + table


def sec_leakage(leak, ds=None, images=None, *, n_pairs: int = 8) -> str:
    """Recall and precision of planted pairs over the number of candidates (datamodels
    against the representation) where a ground truth exists, and the top-ranked pairs of each
    global ranking as images with a table."""
    if leak is None:
        return _missing("No leakage candidates given. Run <code>dmdask leakage STORE "
                        "DATAMODELS --candidates 10 --representation --out leak.zarr</code> "
                        "and pass <code>leakage=</code> (or <code>--leakage</code>).")
    bad = _malformed(leak, "target", ("candidate", "score", "pair_target", "pair_candidate",
                                      "pair_score"), "leakage Dataset")
    if bad:
        return bad
    out = ""
    if "recall" in leak:
        out += _curves(leak) + _curve_table(leak)
    else:
        out += _missing("No planted ground truth (the store's job records no planted pairs), "
                        "so no recall or precision: the candidates are ranked below.")
    src, note = usable_images(ds, images)
    if src is None:
        out += _missing(note)
    return out + _top_pairs(leak, src, n_pairs)
