"""`imgpipe cost`: what a million images cost on AWS, from measured CPU time and dated
list prices.

- `prices.json` (beside this file): every price, its unit, where it came from and the date
  it was listed on; a user's own file or single overrides replace any of them.
- `inputs`: the per-image CPU time `imgpipe bench` measures, written to
  `bench/cost-inputs.json` (committed, so a fresh clone has figures).
- `model`: the bill's lines for one scenario (photo size, architecture, memory, output
  documents, ingest or backfill) and the comparisons.
"""

from imgpipe.cost.inputs import CostInputs, PhotoCost, cost_inputs_doc, load_cost_inputs
from imgpipe.cost.model import Bill, Line, Prices, Scenario, bill_for, load_prices

__all__ = ["Bill", "CostInputs", "Line", "PhotoCost", "Prices", "Scenario", "bill_for",
           "cost_inputs_doc", "load_cost_inputs", "load_prices"]
