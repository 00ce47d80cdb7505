"""Named TDAS frequency-filter presets: the parameters the TDAS paper reports for NCSN++.

Source: the TDAS paper, "Accelerating Score-based Generative Models for High-Resolution Image
Synthesis" (Ma et al., 2022), Appendix A.2, Table 4 ("resulting parameters for NCSN++"): lambda1,
lambda2, r1, r2 per dataset, resolution, number of sampling iterations N' and transform,
estimated automatically from 200 samples per task (what `--mode calibrate` does). The paper uses
DFT by default and DCT for LSUN. Copy of the table as printed (docs/tdas_paper.txt):

| preset | dataset | resolution | N' | transform | lambda1 | lambda2 | r1 | r2 |
|---|---|---|---|---|---|---|---|---|
| cifar10_200_dft | CIFAR-10 | 32 | 200 | DFT | 0.984 | 0.967 | 0.400 | 0.455 |
| cifar10_166_dft | CIFAR-10 | 32 | 166 | DFT | 0.973 | 0.945 | 0.400 | 0.455 |
| cifar10_142_dft | CIFAR-10 | 32 | 142 | DFT | 0.965 | 0.932 | 0.400 | 0.455 |
| cifar10_125_dft | CIFAR-10 | 32 | 125 | DFT | 0.959 | 0.929 | 0.400 | 0.455 |
| cifar10_111_dft | CIFAR-10 | 32 | 111 | DFT | 0.952 | 0.901 | 0.400 | 0.455 |
| cifar10_100_dft | CIFAR-10 | 32 | 100 | DFT | 0.948 | 0.895 | 0.400 | 0.455 |
| cifar10_50_dft | CIFAR-10 | 32 | 50 | DFT | 0.892 | 0.798 | 0.400 | 0.455 |
| celeba_132_dft | CelebA | 64 | 132 | DFT | 0.877 | 0.782 | 0.398 | 0.456 |
| lsun_church_400_dft | LSUN church | 256 | 400 | DFT | 0.921 | 0.873 | 0.400 | 0.455 |
| lsun_church_400_dct | LSUN church | 256 | 400 | DCT | 0.591 | 0.511 | 0.781 | 0.862 |
| lsun_bedroom_400_dft | LSUN bedroom | 256 | 400 | DFT | 0.907 | 0.842 | 0.400 | 0.455 |
| lsun_bedroom_400_dct | LSUN bedroom | 256 | 400 | DCT | 0.638 | 0.540 | 0.770 | 0.901 |
| ffhq_100_dft | FFHQ | 1024 | 100 | DFT | 0.955 | 0.878 | 0.400 | 0.455 |

Every DFT row's radii are the 0.25 and 0.33 quantiles of the normalised radius rho over all
coordinates at that resolution (0.400 / 0.455 at 32 px, 0.398 / 0.456 at 64 px), which is how
`tdas.calibration.fit_quantile_filter` (`config.calibrate.method = 'quantile'`) reads the paper's
rule; the DCT rows' radii depend on the data set.

Select one with `config.sampling.tdas.preset = '<name>'`: it sets `tdas.transform`, `r1`, `r2`,
`lambda1`, `lambda2` (the config's own values of those five are then ignored). A preset is a
frequency filter only; the space filter still comes from `tdas.space_file`. The presets were
measured for the released NCSN++ checkpoints at the stated resolution and N' (with the sampler's
noise-removal step and the paper's settings); on another model or budget, calibrate instead.
"""
import dataclasses
from typing import Dict
from errors import UserError


@dataclasses.dataclass(frozen=True)
class Preset:
  """One row of the paper's Table 4."""
  dataset: str
  resolution: int
  steps: int
  transform: str
  lambda1: float
  lambda2: float
  r1: float
  r2: float

  def filter_fields(self) -> Dict[str, object]:
    """The `config.sampling.tdas` fields the preset sets."""
    return dict(transform=self.transform, r1=self.r1, r2=self.r2, lambda1=self.lambda1,
                lambda2=self.lambda2)


def _rows():
  cifar = {200: (0.984, 0.967), 166: (0.973, 0.945), 142: (0.965, 0.932), 125: (0.959, 0.929),
           111: (0.952, 0.901), 100: (0.948, 0.895), 50: (0.892, 0.798)}
  rows = {f"cifar10_{n}_dft": Preset("CIFAR-10", 32, n, "dft", l1, l2, 0.400, 0.455)
          for n, (l1, l2) in cifar.items()}
  rows.update({
      "celeba_132_dft": Preset("CelebA", 64, 132, "dft", 0.877, 0.782, 0.398, 0.456),
      "lsun_church_400_dft": Preset("LSUN church", 256, 400, "dft", 0.921, 0.873, 0.400, 0.455),
      "lsun_church_400_dct": Preset("LSUN church", 256, 400, "dct", 0.591, 0.511, 0.781, 0.862),
      "lsun_bedroom_400_dft": Preset("LSUN bedroom", 256, 400, "dft", 0.907, 0.842, 0.400,
                                     0.455),
      "lsun_bedroom_400_dct": Preset("LSUN bedroom", 256, 400, "dct", 0.638, 0.540, 0.770,
                                     0.901),
      "ffhq_100_dft": Preset("FFHQ", 1024, 100, "dft", 0.955, 0.878, 0.400, 0.455),
  })
  return rows


PRESETS: Dict[str, Preset] = _rows()


def get_preset(name: str) -> Preset:
  """The preset called `name`; an unknown name is a ValueError listing the known ones."""
  try:
    return PRESETS[name]
  except KeyError:
    raise UserError(f"config.sampling.tdas.preset={name!r} is not a known TDAS preset; known "
                     f"presets (the TDAS paper's Table 4): {', '.join(sorted(PRESETS))}."
                     ) from None


def markdown_table() -> str:
  """The presets as a markdown table (for the README)."""
  lines = ["| preset | dataset | resolution | N' | transform | λ1 | λ2 | r1 | r2 |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, p in PRESETS.items():
    lines.append(f"| `{name}` | {p.dataset} | {p.resolution} | {p.steps} | "
                 f"{p.transform.upper()} | {p.lambda1:.3f} | {p.lambda2:.3f} | {p.r1:.3f} | "
                 f"{p.r2:.3f} |")
  return "\n".join(lines)
