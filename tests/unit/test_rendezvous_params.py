"""``--rdzv-backend=dtr``: everything refused before the first RPC, each message naming the value.

Nothing here reaches a coordinator: the clients point at a loopback port with
nothing listening, and every refusal below happens before any call. The
behaviour against real replicas is in tests/integration/test_rendezvous_backend.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from torch.distributed.elastic.rendezvous.api import RendezvousParameters, RendezvousStateError

from dtr.errors import InvalidArgument
from dtr.etcd import pick_free_ports
from dtr.keys import MAX_RENDEZVOUS_VALUE_BYTES, MAX_STORE_ENTRIES, MAX_STORE_KEY_CHARS
from dtr.worker.client import CoordinatorClient
from dtr.worker.rendezvous import (
    DtrRendezvousBackend,
    DtrStore,
    RendezvousConfig,
    create_rdzv_handler,
    handler_creator,
)
from dtr.worker.rendezvous_store import write_batches


@pytest.fixture(autouse=True)
def no_dtr_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The credentials and job come from the test, never from the machine's ``DTR_*``."""
    for name in ("DTR_JOB", "DTR_TLS_CA", "DTR_TLS_CERT", "DTR_TLS_KEY", "DTR_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def nowhere() -> str:
    """A loopback HOST:PORT with nothing listening."""
    return f"127.0.0.1:{pick_free_ports(1)[0]}"


@pytest.fixture
def client(nowhere: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CoordinatorClient]:
    """A client whose every call fails the test: the refusals must come first."""
    made = CoordinatorClient(nowhere, job="j1", caller_id="unit")

    def no_rpc(method: str, *args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"{method} was sent; the value should have been refused before any RPC")

    monkeypatch.setattr(made, "call", no_rpc)
    yield made
    made.close()


def params(endpoint: str = "127.0.0.1:1", run_id: str = "run-1", **conf: Any) -> Any:
    return RendezvousParameters(
        backend="dtr", endpoint=endpoint, run_id=run_id, min_nodes=1, max_nodes=1, **conf
    )


# -- torchrun's flags ------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        "   ",
        "etcd://h:2379",
        "http://10.0.0.1:50051",
        "host",
        "host:0",
        "host:65536",
        "10.0.0.1:50051,",
        "10.0.0.1:50051;10.0.0.2:50051",
    ],
)
def test_an_endpoint_that_is_not_a_coordinator_list_is_refused_naming_the_flag(
    endpoint: str,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        create_rdzv_handler(params(endpoint))
    message = str(caught.value)
    assert "--rdzv-endpoint" in message
    assert repr(endpoint) in message
    assert "HOST:PORT[,HOST:PORT...]" in message


def test_a_comma_separated_coordinator_list_is_accepted_in_order() -> None:
    config = RendezvousConfig.from_parameters(params(" 10.0.0.2:7001,h-1.example:7002 "), {})
    assert config.coordinators == ("10.0.0.2:7001", "h-1.example:7002")


@pytest.mark.parametrize("run_id", ["", "a/b", "-leading-dash", "has space", "x" * 129, "é"])
def test_a_rendezvous_id_that_cannot_be_a_key_segment_is_refused_naming_the_flag(
    run_id: str,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        create_rdzv_handler(params(run_id=run_id))
    assert "--rdzv-id" in str(caught.value)
    assert repr(run_id) in str(caught.value)


def test_the_job_comes_from_rdzv_conf_then_the_environment_then_default() -> None:
    from_conf = RendezvousConfig.from_parameters(params(job="j-conf"), {"DTR_JOB": "j-env"})
    from_env = RendezvousConfig.from_parameters(params(), {"DTR_JOB": "j-env"})
    default = RendezvousConfig.from_parameters(params(), {})
    assert (from_conf.job, from_env.job, default.job) == ("j-conf", "j-env", "default")


def test_a_bad_job_is_refused_naming_the_conf_key_and_value() -> None:
    with pytest.raises(InvalidArgument) as caught:
        RendezvousConfig.from_parameters(params(job="a/b"), {})
    assert "--rdzv-conf job" in str(caught.value)
    assert "'a/b'" in str(caught.value)


@pytest.mark.parametrize("key", ["connect_timeout", "read_timeout"])
@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan"])
def test_timeouts_must_be_positive_seconds(key: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        RendezvousConfig.from_parameters(params(**{key: value}), {})
    assert f"--rdzv-conf {key}={value!r}" in str(caught.value)


def test_timeouts_are_read_from_strings_as_torchrun_passes_them() -> None:
    config = RendezvousConfig.from_parameters(params(connect_timeout="2.5", read_timeout="7"), {})
    assert (config.connect_timeout_s, config.read_timeout_s) == (2.5, 7.0)


def test_a_tls_certificate_without_its_key_is_refused_naming_both() -> None:
    with pytest.raises(InvalidArgument) as caught:
        RendezvousConfig.from_parameters(params(tls_cert="/etc/dtr/client.pem"), {})
    assert "tls_cert='/etc/dtr/client.pem'" in str(caught.value)
    assert "tls_key=None" in str(caught.value)


def test_an_unreadable_token_file_is_refused_naming_the_conf_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    with pytest.raises(InvalidArgument) as caught:
        create_rdzv_handler(params(token_file=str(missing)))
    assert "--rdzv-conf token_file" in str(caught.value)
    assert str(missing) in str(caught.value)


def test_a_token_file_others_can_read_is_refused_naming_the_conf_key(tmp_path: Path) -> None:
    loose = tmp_path / "token"
    loose.write_text("t" * 40 + "\n")
    loose.chmod(0o644)
    with pytest.raises(InvalidArgument) as caught:
        create_rdzv_handler(params(token_file=str(loose)))
    assert f"--rdzv-conf token_file: {loose}" in str(caught.value)


def test_without_rdzv_conf_credentials_the_workers_environment_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "env-token"
    monkeypatch.setenv("DTR_TOKEN_FILE", str(missing))
    with pytest.raises(InvalidArgument) as caught:
        create_rdzv_handler(params())
    assert "DTR_TOKEN_FILE" in str(caught.value)
    assert str(missing) in str(caught.value)


def test_a_missing_tls_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(InvalidArgument) as caught:
        create_rdzv_handler(params(tls_ca=str(missing)))
    assert str(missing) in str(caught.value)


def test_good_flags_make_a_dtr_handler_without_calling_anyone(nowhere: str) -> None:
    handler = create_rdzv_handler(params(nowhere, run_id="job-7", job="j1"))
    assert handler.get_backend() == "dtr"
    assert handler.get_run_id() == "job-7"


def test_the_entry_point_hands_torch_the_handler_factory() -> None:
    assert handler_creator() is create_rdzv_handler


def test_importing_the_worker_library_or_the_entry_point_imports_no_torch() -> None:
    code = (
        "import sys, dtr.worker, dtr.worker.rendezvous\n"
        "dtr.worker.rendezvous.handler_creator()\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert result.stdout.strip() == "False"


# -- the backend -----------------------------------------------------------------------


def test_an_oversized_state_is_refused_before_any_rpc_naming_size_and_limit(
    client: CoordinatorClient,
) -> None:
    backend = DtrRendezvousBackend(client, "run-1")
    with pytest.raises(RendezvousStateError) as caught:
        backend.set_state(b"x" * 2_000_000, None)
    assert "2,000,000 bytes" in str(caught.value)
    assert f"{MAX_RENDEZVOUS_VALUE_BYTES:,}" in str(caught.value)


def test_the_backend_is_named_dtr_and_refuses_a_bad_rendezvous_id(
    client: CoordinatorClient,
) -> None:
    assert DtrRendezvousBackend(client, "run-1").name == "dtr"
    with pytest.raises(InvalidArgument, match=r"rdzv_id .*'a/b'"):
        DtrRendezvousBackend(client, "a/b")


# -- the store -------------------------------------------------------------------------


@pytest.fixture
def store(client: CoordinatorClient) -> DtrStore:
    return DtrStore(client, "run-1", timeout=timedelta(seconds=3))


@pytest.mark.parametrize("op", ["compare_set", "delete_key", "num_keys"])
def test_store_operations_torch_does_not_use_are_refused_by_name(store: DtrStore, op: str) -> None:
    calls = {
        "compare_set": lambda: store.compare_set("k", "", "v"),
        "delete_key": lambda: store.delete_key("k"),
        "num_keys": store.num_keys,
    }
    with pytest.raises(NotImplementedError) as caught:
        calls[op]()
    assert f"does not support {op}" in str(caught.value)


def test_compare_set_is_refused_through_torchs_prefix_store_too(store: DtrStore) -> None:
    with pytest.raises(NotImplementedError, match="does not support compare_set"):
        dist.PrefixStore("torch.rendezvous.run-1.0", store).compare_set("k", "", "v")


def test_an_oversized_store_value_is_refused_naming_key_size_and_limit(store: DtrStore) -> None:
    size = MAX_RENDEZVOUS_VALUE_BYTES + 1
    with pytest.raises(InvalidArgument) as caught:
        store.set("big", b"x" * size)
    assert "'big'" in str(caught.value)
    assert f"{size:,} bytes" in str(caught.value)
    assert f"{MAX_RENDEZVOUS_VALUE_BYTES:,}" in str(caught.value)


def test_a_store_key_longer_than_the_limit_is_refused_naming_its_length(store: DtrStore) -> None:
    key = "k" * (MAX_STORE_KEY_CHARS + 1)
    with pytest.raises(InvalidArgument) as caught:
        store.get(key)
    assert f"({len(key)} characters)" in str(caught.value)
    assert str(MAX_STORE_KEY_CHARS) in str(caught.value)


def test_multi_set_needs_one_value_per_key(store: DtrStore) -> None:
    with pytest.raises(InvalidArgument, match="2 keys but 1 values"):
        store.multi_set(["a", "b"], ["1"])


def test_add_needs_an_integer_amount(store: DtrStore) -> None:
    with pytest.raises(InvalidArgument, match=r"got 1\.5"):
        store.add("n", 1.5)  # type: ignore[arg-type]


def test_writes_are_split_into_calls_the_coordinators_accept() -> None:
    small = {f"k{i}": b"v" for i in range(2 * MAX_STORE_ENTRIES + 2)}
    assert [len(b) for b in write_batches(small)] == [MAX_STORE_ENTRIES, MAX_STORE_ENTRIES, 2]
    half = MAX_RENDEZVOUS_VALUE_BYTES // 2
    large = {"a": b"x" * half, "b": b"x" * half, "c": b"x"}
    assert [[k for k, _ in b] for b in write_batches(large)] == [["a", "b"], ["c"]]
