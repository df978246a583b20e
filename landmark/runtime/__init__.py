"""The runtime: what loads a trained model and answers with it (predictor, app, tagger, Spark).

Nothing here imports training, tuning, data caching or plotting (a test checks it): the runtime
reads a model file through `contract.ModelMetadata` and needs only torch, PIL and, for models
in a registry, `landmark.tracking`.
"""
