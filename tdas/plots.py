"""PNG figures of frequency statistics and calibrations (matplotlib, Agg backend).

Called by `--mode calibrate` (`calibrate_mode`) and `--mode stats` (`stats_mode`); each function
writes one PNG and returns nothing.
Conventions, so a figure reads at a glance: DCT maps have the zero frequency (DC) in the top-left
corner; DFT maps are shifted so that it sits in the centre; amplitudes are log10; deviation maps
are Dev on a diverging log scale centred at Dev = 1 (red: excess amplitude, blue: missing).
"""
import numpy as np

from atomic_io import atomic_savefig
from tdas import stats as tdas_stats


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _display(values, transform):
  """A map as shown: DFT maps fftshifted (zero frequency in the centre)."""
  values = np.asarray(values, np.float64)
  return np.fft.fftshift(values) if transform == "dft" else values


def _origin_note(transform):
  return "zero frequency at the centre" if transform == "dft" else "DC at top left"


def _amplitude_panel(fig, axis, values, transform, title, vmin=None, vmax=None):
  image = axis.imshow(_display(tdas_stats.log_amplitude(values), transform), cmap="magma",
                      vmin=vmin, vmax=vmax)
  axis.set_title(title, fontsize=9)
  axis.set_xticks([])
  axis.set_yticks([])
  fig.colorbar(image, ax=axis, fraction=0.046, pad=0.03, label="log10 mean |coefficient|")


def _deviation_panel(fig, axis, deviation, transform, title):
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  deviation = np.where(np.isfinite(deviation) & (deviation > 0), deviation, 1.0)
  # A log scale symmetric about Dev = 1, so 1/2 and 2 are equally far from white.
  limit = max(float(np.max(np.abs(np.log(deviation)))), 1e-3)
  norm = colors.LogNorm(vmin=np.exp(-limit), vmax=np.exp(limit))
  image = axis.imshow(_display(deviation, transform), cmap="RdBu_r", norm=norm)
  axis.set_title(title, fontsize=9)
  axis.set_xticks([])
  axis.set_yticks([])
  bar = fig.colorbar(image, ax=axis, fraction=0.046, pad=0.03)  # log scale
  ticks = np.exp(np.linspace(-limit, limit, 5))
  bar.set_ticks(ticks)
  bar.set_ticklabels([f"{t:.3g}" for t in ticks])
  bar.ax.minorticks_off()


def _zoned_curve(fit, rho):
  return np.where(rho <= fit["r1"], 1.0, np.where(rho <= fit["r2"], fit["lambda1"],
                                                   fit["lambda2"]))


def plot_calibration(path, reference_amplitude, accelerated_amplitude, result, full_steps: int,
                     steps: int):
  """Four panels: log-amplitude maps of both sets, the deviation map, and the radial profile of
  Dev with 1/Dev and the fitted filters (zones, quantile rule, radial gains) drawn over it.

  Args:
    path: the PNG to write.
    reference_amplitude, accelerated_amplitude: (H, W) S at the full N and at N'.
    result: `tdas.calibration.calibrate_frequency_filter`'s dict.
    full_steps, steps: N and N' (for the titles).
  """
  plt = _pyplot()
  transform = result["transform"]
  fig, axes = plt.subplots(2, 2, figsize=(10.5, 8.5))
  low = float(min(np.min(tdas_stats.log_amplitude(reference_amplitude)),
                  np.min(tdas_stats.log_amplitude(accelerated_amplitude))))
  high = float(max(np.max(tdas_stats.log_amplitude(reference_amplitude)),
                   np.max(tdas_stats.log_amplitude(accelerated_amplitude))))
  label = transform.upper()
  _amplitude_panel(fig, axes[0, 0], reference_amplitude, transform,
                   f"reference: {full_steps} steps, {label} ({_origin_note(transform)})", low,
                   high)
  _amplitude_panel(fig, axes[0, 1], accelerated_amplitude, transform,
                   f"accelerated: {steps} steps, {label}", low, high)
  _deviation_panel(fig, axes[1, 0], result["deviation"], transform,
                   f"Dev = S({steps}) / S({full_steps}); red: excess amplitude")

  axis = axes[1, 1]
  centres, profile = result["centres"], result["profile"]
  rho = np.linspace(0.0, 1.0, 501)
  axis.axhline(1.0, color="gray", lw=0.8)
  axis.plot(centres, profile, "o", color="tab:red", ms=4, label="Dev per radial bin")
  axis.plot(centres, 1.0 / profile, "s", color="tab:blue", ms=3, mfc="none", label="1 / Dev")
  zones, quantile = result["zones"], result["quantile"]
  chosen = result["method"]
  axis.plot(rho, _zoned_curve(zones, rho), "-", color="black", lw=2 if chosen == "zones" else 1,
            label=(f"zones (least squares): λ1 {zones['lambda1']:.3f}, λ2 {zones['lambda2']:.3f}"))
  axis.plot(rho, _zoned_curve(quantile, rho), "--", color="tab:green",
            lw=2 if chosen == "quantile" else 1,
            label=f"quantile rule: λ1 {quantile['lambda1']:.3f}, λ2 {quantile['lambda2']:.3f}")
  edges = np.linspace(0.0, 1.0, len(result["radial_gains"]) + 1)
  axis.stairs(result["radial_gains"], edges, color="tab:purple",
              lw=2 if chosen == "radial" else 1, label="radial gains (1 / Dev per bin)")
  for r, name in ((zones["r1"], "r1"), (zones["r2"], "r2")):
    axis.axvline(r, color="black", ls=":", lw=0.8)
    axis.annotate(f"{name} {r:.3f}", (r, 1.0), textcoords="offset points", xytext=(3, 4),
                  fontsize=8)
  shown = np.concatenate([profile, 1.0 / profile, result["radial_gains"], [1.0],
                          [zones["lambda1"], zones["lambda2"], quantile["lambda1"],
                           quantile["lambda2"]]])
  shown = shown[np.isfinite(shown)]
  margin = 0.1 * max(float(shown.max() - shown.min()), 0.02)
  axis.set_ylim(float(shown.min()) - margin, float(shown.max()) + 2 * margin)
  axis.set_xlim(0.0, 1.0)
  axis.set_xlabel("normalised radius rho")
  axis.set_ylabel("ratio / gain")
  axis.set_title(f"radial profile; filter written: {chosen}", fontsize=9)
  axis.grid(True, alpha=0.3)
  axis.legend(fontsize=7, loc="best")
  fig.suptitle(f"TDAS calibration: {steps} vs {full_steps} steps ({label})")
  fig.tight_layout()
  atomic_savefig(fig, path, dpi=110)
  plt.close(fig)


def plot_behaviour(path, centres, curves: dict, transform: str):
  """The frequency behaviour function B(rho) of each labelled curve (num_bins,) vs the data."""
  plt = _pyplot()
  fig, axis = plt.subplots(figsize=(6, 4))
  axis.axhline(1.0, color="gray", lw=0.8)
  for label, values in curves.items():
    axis.plot(centres, values, "o-", ms=3, label=label)
  axis.set_xlabel("normalised radius rho")
  axis.set_ylabel("S(samples) / S(data)")
  axis.set_title(f"frequency behaviour function ({transform.upper()}): > 1 amplifies", fontsize=9)
  axis.grid(True, alpha=0.3)
  axis.legend(fontsize=8)
  fig.tight_layout()
  atomic_savefig(fig, path, dpi=110)
  plt.close(fig)


def plot_frequency_statistics(path, dct_amplitude, dft_amplitude, num_images: int, title: str,
                              num_bins: int = 32):
  """log-amplitude DCT and DFT maps of a data set and their radial profiles."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
  _amplitude_panel(fig, axes[0], dct_amplitude, "dct", f"DCT ({_origin_note('dct')})")
  _amplitude_panel(fig, axes[1], dft_amplitude, "dft", f"DFT ({_origin_note('dft')})")
  for values, transform in ((dct_amplitude, "dct"), (dft_amplitude, "dft")):
    centres, profile = tdas_stats.radial_profile(values, num_bins, transform)
    axes[2].plot(centres, profile, "o-", ms=3, label=transform.upper())
  axes[2].set_yscale("log")
  axes[2].set_xlabel("normalised radius rho")
  axes[2].set_ylabel("mean |coefficient| per radial bin")
  axes[2].grid(True, which="both", alpha=0.3)
  axes[2].legend()
  fig.suptitle(f"{title}: mean amplitude over {num_images} images")
  fig.tight_layout()
  atomic_savefig(fig, path, dpi=110)
  plt.close(fig)


def plot_space(path, mean_image, space, title: str):
  """The data's mean image next to the space filter A made from it (first channel and mean)."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
  mean_image = np.clip(np.asarray(mean_image, np.float64), 0.0, 1.0)
  axes[0].imshow(mean_image[..., 0] if mean_image.shape[-1] == 1 else mean_image,
                 cmap="gray", vmin=0, vmax=1)
  axes[0].set_title("mean image")
  image = axes[1].imshow(np.asarray(space).mean(axis=-1), cmap="viridis")
  axes[1].set_title("space filter A (channel mean)")
  fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.03)
  for axis in axes:
    axis.set_xticks([])
    axis.set_yticks([])
  fig.suptitle(title)
  fig.tight_layout()
  atomic_savefig(fig, path, dpi=110)
  plt.close(fig)


def plot_sample_sets(path, grids: dict, title: str):
  """Labelled uint8 image grids (h, w, C) (e.g. `images.image_grid` of a few samples), side by
  side."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 5.4))
  axes = np.atleast_1d(axes)
  for axis, (label, grid) in zip(axes, grids.items()):
    grid = np.asarray(grid)
    axis.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
    axis.set_title(label)
    axis.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  atomic_savefig(fig, path, dpi=110)
  plt.close(fig)


def plot_pds_masks(path, space_filter, freq_filter, title: str):
  """PDS's two filters (H, W, C), as the sampler applies them (after softening and inversion):
  the space filter and the DFT filter (zero frequency in the centre), each the channel mean."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
  panels = (("space filter (channel mean)", np.asarray(space_filter).mean(axis=-1)),
            ("DFT filter (channel mean, " + _origin_note("dft") + ")",
             _display(np.asarray(freq_filter).mean(axis=-1), "dft")))
  for axis, (label, values) in zip(axes, panels):
    image = axis.imshow(values, cmap="viridis")
    axis.set_title(label, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    fig.colorbar(image, ax=axis, fraction=0.046, pad=0.03)
  fig.suptitle(title)
  fig.tight_layout()
  atomic_savefig(fig, path, dpi=110)
  plt.close(fig)
