"""rayscore: score Spark DataFrames with large Keras models on a pool of Ray actors.

Spark (RayDP's Spark on Ray by default, or the Spark you already run, with
Ray on Spark or a Ray cluster on its hosts) reads the DataFrame and streams
its Arrow batches to long-lived Ray actors, each holding one copy of the
model loaded from shared storage; the predictions stream back and Spark
writes them. The model is never serialised.

Four ways in::

    rayscore run config.yaml                       # the CLI (rayscore validate config.yaml: check only)
    rayscore.run("config.yaml")                    # the same from Python
    with rayscore.session() as s:                  # a DataFrame you already have
        scored = rayscore.predict(df, model="ctr.keras", keep_columns=["id"])
    rayscore.predict(df, model="ctr.keras")        # df of any SparkSession (docs/deployments.md)
    ctr = rayscore.udf(model="ctr.keras")          # a column expression: df.withColumn("p", ctr(*cols))
"""

from ._config import Config, load_config
from ._errors import (
    ConfigError,
    InputError,
    ModelError,
    OutputError,
    PredictError,
    RayscoreError,
    SessionError,
)
from ._model import ModelSpec, TensorSpec, register_loader
from ._pipeline import inspect_model, predict, run
from ._progress import Progress
from ._report import RunResult
from ._session import Session, session
from ._udf import udf
from ._validate import Validation, validate

__version__ = "0.1.0"

__all__ = [
    "run",
    "validate",
    "Validation",
    "predict",
    "udf",
    "session",
    "Session",
    "load_config",
    "Config",
    "RunResult",
    "Progress",
    "inspect_model",
    "register_loader",
    "ModelSpec",
    "TensorSpec",
    "RayscoreError",
    "ConfigError",
    "ModelError",
    "InputError",
    "OutputError",
    "SessionError",
    "PredictError",
    "__version__",
]
