"""The sampler benchmarks' tables: per-seed rows summarised with 95 % intervals, paired
differences against vanilla DPM-Solver++(2M) SDE (and TDAS against vanilla, PDS against TDAS) on
the same seeds, and the markdown tables that show both. Shared by `benchmarks.samplers` (the
digits model) and `benchmarks.samplers_analytic` (the analytic Gaussian).

A row is one sample set: {method, variant ('vanilla', 'tdas' or 'pds'), steps, nfe, seed,
num_samples, <measure>: float, ...}.
"""
from benchmarks import paired_stats
from benchmarks.sampler_budgets import LABELS, METHODS

VARIANTS = ("vanilla", "tdas", "pds")
VARIANT_LABELS = {"vanilla": "", "tdas": ", TDAS (calibrated)", "pds": ", PDS (its masks)"}

BASELINE = "dpmpp_2m_sde"  # the vanilla method every other is paired against
MEASURES = ("frechet_distance", "kernel_distance")  # the digits benchmark's paired measures
EXTRAS = ("frequency_deviation", "label_entropy", "seconds")
EFFECTS = {"tdas": "TDAS − vanilla", "pds": "PDS − TDAS", "pds_vanilla": "PDS − vanilla"}


def cell_key(row):
  """(method, variant, nfe, num_samples): the cell a row belongs to."""
  return (row["method"], row["variant"], row["nfe"], row.get("num_samples", 0))


def _per_seed(rows, key, field) -> dict:
  return {r["seed"]: r[field] for r in rows if cell_key(r) == key and field in r}


def summarise(rows, measures=MEASURES, extras=EXTRAS):
  """Per (method, variant, NFE, samples): the mean of each field with its 95 % t interval over
  seeds (`_low`, `_high`) and std; the per-seed values of the `measures`."""
  table = []
  for key in sorted({cell_key(r) for r in rows},
                    key=lambda k: (METHODS.index(k[0]), k[1], k[2], k[3])):
    chosen = [r for r in rows if cell_key(r) == key]
    entry = dict(method=key[0], variant=key[1], nfe=key[2], num_samples=key[3],
                 steps=chosen[0]["steps"], seeds=sorted(r["seed"] for r in chosen))
    for field in tuple(measures) + tuple(extras):
      values = [r[field] for r in chosen if field in r]
      if not values:
        continue
      interval = paired_stats.t_interval(values)
      entry[field] = interval.mean
      entry[field + "_std"] = 0.0 if interval.n < 2 else interval.std
      entry[field + "_low"], entry[field + "_high"] = (
          (interval.low, interval.high) if interval.n > 1 else (None, None))
      if field in measures:
        entry[field + "_per_seed"] = {str(r["seed"]): r[field] for r in chosen if field in r}
    table.append(entry)
  return table


def comparisons(rows, budgets, measures=MEASURES) -> list:
  """The paired differences the benchmark reports, each on the seeds both sides share at the same
  sample count and NFE column: every variant against vanilla DPM-Solver++(2M) SDE ('sampler'),
  TDAS against the same method's vanilla ('tdas'), PDS against TDAS ('pds') and against vanilla
  ('pds_vanilla') on PC."""
  cells = {cell_key(r): r for r in rows}
  columns = sorted(set(budgets) | {nfe_column(k[2], budgets) for k in cells})
  by_column = {}
  for key in cells:
    by_column.setdefault((key[0], key[1], nfe_column(key[2], columns), key[3]), key)
  found = []
  for (method, variant, column, num_samples), key in sorted(
      by_column.items(), key=lambda item: (item[0][2], item[0][3], METHODS.index(item[0][0]))):
    against = [("sampler", (BASELINE, "vanilla", column, num_samples))]
    if variant == "tdas":
      against.append(("tdas", (method, "vanilla", column, num_samples)))
    if variant == "pds":
      against += [("pds", (method, "tdas", column, num_samples)),
                  ("pds_vanilla", (method, "vanilla", column, num_samples))]
    for kind, other in against:
      if other not in by_column or by_column[other] == key:
        continue
      entry = dict(kind=kind, method=method, variant=variant, nfe_column=column,
                   num_samples=num_samples, against=dict(method=other[0], variant=other[1]))
      for field in measures:
        mine, theirs = _per_seed(rows, key, field), _per_seed(rows, by_column[other], field)
        if not set(mine) & set(theirs):
          continue
        difference = paired_stats.paired_difference(mine, theirs)
        entry[field] = dict(difference.to_json(), verdict=paired_stats.verdict(difference))
      if any(field in entry for field in measures):
        found.append(entry)
  return found


def floors(result) -> dict:
  """{str(num_samples): floor}; runs before per-size floors held one floor of their num_samples."""
  floor = result.get("real_floor", {})
  if "frechet_distance" in floor:
    return {str(floor.get("num_samples", result["num_samples"])): floor}
  return dict(floor)


def nfe_column(nfe: int, budgets) -> int:
  """The budget column an NFE count belongs to (Heun's 2n − 1 goes with 2n)."""
  return min(budgets, key=lambda b: abs(b - nfe))


def _value(entry, field, digits) -> str:
  return paired_stats.format_value(paired_stats.Interval(
      entry[field], entry[field + "_low"], entry[field + "_high"], entry[field + "_std"],
      len(entry["seeds"]), 0.0), digits)


def _difference_text(comparison, field, digits) -> str:
  return paired_stats.verdict_text(comparison[field], digits)


def table_text(result, budgets, field: str = "frechet_distance", digits: int = 1) -> str:
  """Two markdown tables of `field` (the Fréchet distance or KID × 10³). The ranking: each method
  (rows) and NFE budget (columns) as mean ± the 95 % interval's half width over seeds, then its
  paired difference to vanilla DPM-Solver++(2M) SDE on the same seeds, with the verdict; the
  best vanilla mean per column in bold. Then TDAS against vanilla (and PDS against TDAS) per
  method. Each cell uses the most samples a run drew for it."""
  columns = sorted(set(budgets) | {nfe_column(e["nfe"], budgets) for e in result["table"]})
  cells = {}
  for e in sorted(result["table"], key=lambda e: e.get("num_samples", 0)):
    if field in e:  # rows of runs before a measure existed lack it
      cells[(e["method"], e["variant"], nfe_column(e["nfe"], columns))] = e
  compared = {(c["kind"], c["method"], c["variant"], c["nfe_column"], c["num_samples"]): c
              for c in result.get("comparisons", [])}
  best = {c: min((e[field] for (m, v, cc), e in cells.items() if cc == c and v == "vanilla"),
                 default=None) for c in columns}
  header = "| sampler | " + " | ".join(f"NFE ≈ {c}" for c in columns) + " |"
  rule = "|---|" + "---|" * len(columns)
  ranking, effects = [header, rule], [header.replace("| sampler |", "| variant |"), rule]
  for method in result["methods"]:
    for variant in VARIANTS:
      if not any(k[0] == method and k[1] == variant for k in cells):
        continue
      row = []
      effect = {kind: [] for kind in EFFECTS if kind.startswith(variant)}
      for c in columns:
        e = cells.get((method, variant, c))
        if e is None or field not in e:
          row.append("")
          for cells_of_kind in effect.values():
            cells_of_kind.append("")
          continue
        samples = e.get("num_samples", 0)
        text = _value(e, field, digits)
        if variant == "vanilla" and e[field] == best[c]:
          text = f"**{text}**"
        if method == BASELINE and variant == "vanilla":
          text += " (baseline)"
        versus = compared.get(("sampler", method, variant, c, samples))
        if versus and field in versus:
          text += "; " + _difference_text(versus, field, digits)
        if samples and samples != result.get("num_samples"):
          text += f" [N = {samples}]"
        row.append(text)
        for kind, cells_of_kind in effect.items():
          own = compared.get((kind, method, variant, c, samples))
          cells_of_kind.append(_difference_text(own, field, digits) if own and field in own
                               else "")
      name = LABELS[method] + VARIANT_LABELS[variant]
      ranking.append(f"| {name} | " + " | ".join(row) + " |")
      for kind, cells_of_kind in effect.items():
        if any(cells_of_kind):
          effects.append(f"| {LABELS[method]}: {EFFECTS[kind]} | " + " | ".join(cells_of_kind)
                         + " |")
  for size, floor in sorted(floors(result).items(), key=lambda item: int(item[0])):
    if field + "_per_seed" in floor:
      text = paired_stats.format_value(paired_stats.t_interval(
          list(floor[field + "_per_seed"].values())), digits)
    elif field in floor:  # runs before per-draw floors: mean ± std over the draws
      text = f"{floor[field]:.{digits}f} ± {floor.get(field + '_std', 0.0):.{digits}f} (std)"
    else:
      continue
    ranking.append(f"| {result.get('floor_label', 'real digits')}, N = {size} (floor) | {text} |"
                   + " |" * (len(columns) - 1))
  return "\n".join(ranking) + ("\n\n" + "\n".join(effects) if len(effects) > 2 else "")


