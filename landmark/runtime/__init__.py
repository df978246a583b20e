"""The runtime: what loads a trained model and answers with it (predictor, app, tagger, Spark).

Nothing here imports training, tuning, data caching or plotting (a test checks it): the runtime
reads a model file through `contract.ModelMetadata`; besides torch and PIL it uses
`landmark.config` (defaults), `landmark.tracking` (models in a registry), FastAPI and requests
(the app) and PySpark (the Spark engine, imported only when asked for).
"""
