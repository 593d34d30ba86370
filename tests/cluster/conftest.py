"""Fixtures of tests/cluster (the Cluster itself: support.cluster)."""
import pytest

from support.cluster import Cluster, stop_cluster


@pytest.fixture
def cluster_factory(request):
    """cluster_factory(**Cluster kwargs) -> a started Cluster named after the test; its
    gateways must exit 0 on SIGTERM at the end."""
    made = []

    def make(**kw):
        # At most 60 characters, keeping a parametrized test's parameters (its logs are then
        # not overwritten by the next parameter's).
        test, _, params = request.node.name.partition("[")
        params = params.rstrip("]")[:24]
        name = test[:60 - len(params) - 1] + "_" + params if params else test[:60]
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
