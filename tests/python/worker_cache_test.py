"""moe_router.worker_cache: which failures count as a lost replica."""
import grpc

from moe_router.worker_cache import replica_lost


class _Failed(grpc.RpcError):
    def __init__(self, code, details):
        super().__init__()
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_a_stream_cut_with_its_replica_is_a_lost_replica():
    assert replica_lost(_Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    assert replica_lost(_Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    # What gRPC reports when the replica is killed mid-stream (grpc/grpc#34076).
    assert replica_lost(_Failed(grpc.StatusCode.UNKNOWN, "Stream removed"))


def test_the_servers_answers_are_not():
    assert not replica_lost(_Failed(grpc.StatusCode.UNKNOWN, "Exception calling application"))
    assert not replica_lost(_Failed(grpc.StatusCode.NOT_FOUND, "Stream removed"))
    assert not replica_lost(_Failed(grpc.StatusCode.DATA_LOSS, "checksum"))
    assert not replica_lost(ValueError("Stream removed"))
