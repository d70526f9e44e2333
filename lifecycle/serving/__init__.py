"""``lifecycle serve``: many frozen/compressed versions behind one small HTTP JSON service, rolled out with no restart.

Modules: ``config`` (the strict YAML schema), ``sources`` (a model reference -> a verified local version, and whether
a registry alias has moved), ``registry`` (loaded models, their inference workers and the atomic switch), ``metrics``
(Prometheus text), ``app`` (the Starlette routes and uvicorn), ``pyfunc_model`` (MLflow's models-from-code entry).

The serving process imports only the LiteRT interpreter, numpy, the tokenizer, Starlette and uvicorn: never
TensorFlow, and never mlflow (registry lookups go over MLflow's REST API, or through a short-lived helper process).
"""
