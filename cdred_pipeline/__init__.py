"""cdred: Coupled Distributional Random Expert Distillation (CDRED) as a data pipeline toolkit.

Stages (each a plain function in ``cdred_pipeline.stages``): collect-experts -> render-visual ->
package -> imitate -> evaluate, chained by the ``cdred`` CLI with cached artifacts.
"""

__version__ = "0.1.0"
