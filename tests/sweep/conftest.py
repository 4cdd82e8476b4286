"""A temporary sqlite MLflow store, created once per session (creating one migrates its schema: seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the store's tables now, once
    return uri


@pytest.fixture
def experiment(tracking_uri, request) -> str:
    """A fresh experiment of the shared store, named after the test; its id."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri).create_experiment(request.node.nodeid)
