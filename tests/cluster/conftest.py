"""Fixtures of tests/cluster (the Cluster itself: support.cluster)."""
import pytest

from support.cluster import Cluster, stop_cluster


@pytest.fixture
def cluster_factory(request):
    """cluster_factory(**Cluster kwargs) -> a started Cluster named after the test; its
    gateways must exit 0 on SIGTERM at the end."""
    made = []

    def make(**kw):
        name = request.node.name.replace("[", "_").replace("]", "")[:60]
        c = Cluster(name + (f"-{len(made)}" if made else ""), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        stop_cluster(c)


@pytest.fixture(scope="module")
def shared_cluster(request):
    c = Cluster(request.module.__name__.split(".")[-1], replicas=0)
    yield c
    stop_cluster(c)
