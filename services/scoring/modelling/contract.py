"""The ONNX contract between the model pipeline and the scoring server.

- input `features`: float32 [N, F], columns in the card's feature order; a numeric feature is
  its value, a categorical feature the index of its category in the card's `categories` (as a
  float). Validate before scoring: the graph maps an unknown or fractional index to nonsense
  instead of failing.
- output `probability_of_default`: float32 [N], the probability of default (class 1);
- output `reason_points`: float32 [N, F], per feature the logit-of-default points its value
  costs against that feature's best value (>= 0; 0 = best). The largest are the reasons.
"""

INPUT_NAME = "features"
PROBABILITY_OUTPUT = "probability_of_default"
REASON_POINTS_OUTPUT = "reason_points"
OUTPUT_NAMES = (PROBABILITY_OUTPUT, REASON_POINTS_OUTPUT)
