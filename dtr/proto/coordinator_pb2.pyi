from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATUS_UNSPECIFIED: _ClassVar[WorkerStatus]
    WORKER_STATUS_OK: _ClassVar[WorkerStatus]
    WORKER_STATUS_UNKNOWN_WORKER: _ClassVar[WorkerStatus]
    WORKER_STATUS_DEAD: _ClassVar[WorkerStatus]
    WORKER_STATUS_STALE_INCARNATION: _ClassVar[WorkerStatus]

class ChecksumAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKSUM_ALGORITHM_UNSPECIFIED: _ClassVar[ChecksumAlgorithm]
    CHECKSUM_ALGORITHM_SHA256: _ClassVar[ChecksumAlgorithm]
    CHECKSUM_ALGORITHM_CRC32C: _ClassVar[ChecksumAlgorithm]
    CHECKSUM_ALGORITHM_BLAKE2B: _ClassVar[ChecksumAlgorithm]

class DeregisterReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEREGISTER_REASON_UNSPECIFIED: _ClassVar[DeregisterReason]
    DEREGISTER_REASON_FINISHED: _ClassVar[DeregisterReason]
    DEREGISTER_REASON_SHUTDOWN: _ClassVar[DeregisterReason]
    DEREGISTER_REASON_PREEMPTED: _ClassVar[DeregisterReason]
    DEREGISTER_REASON_ERROR: _ClassVar[DeregisterReason]

class BarrierStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BARRIER_STATUS_UNSPECIFIED: _ClassVar[BarrierStatus]
    BARRIER_STATUS_RELEASED: _ClassVar[BarrierStatus]
    BARRIER_STATUS_MEMBERSHIP_CHANGED: _ClassVar[BarrierStatus]
    BARRIER_STATUS_TIMEOUT: _ClassVar[BarrierStatus]
    BARRIER_STATUS_WAITING: _ClassVar[BarrierStatus]
    BARRIER_STATUS_MISSED: _ClassVar[BarrierStatus]

class CommitStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMIT_STATUS_UNSPECIFIED: _ClassVar[CommitStatus]
    COMMIT_STATUS_ACCEPTED: _ClassVar[CommitStatus]
    COMMIT_STATUS_DUPLICATE: _ClassVar[CommitStatus]
    COMMIT_STATUS_SUPERSEDED: _ClassVar[CommitStatus]
WORKER_STATUS_UNSPECIFIED: WorkerStatus
WORKER_STATUS_OK: WorkerStatus
WORKER_STATUS_UNKNOWN_WORKER: WorkerStatus
WORKER_STATUS_DEAD: WorkerStatus
WORKER_STATUS_STALE_INCARNATION: WorkerStatus
CHECKSUM_ALGORITHM_UNSPECIFIED: ChecksumAlgorithm
CHECKSUM_ALGORITHM_SHA256: ChecksumAlgorithm
CHECKSUM_ALGORITHM_CRC32C: ChecksumAlgorithm
CHECKSUM_ALGORITHM_BLAKE2B: ChecksumAlgorithm
DEREGISTER_REASON_UNSPECIFIED: DeregisterReason
DEREGISTER_REASON_FINISHED: DeregisterReason
DEREGISTER_REASON_SHUTDOWN: DeregisterReason
DEREGISTER_REASON_PREEMPTED: DeregisterReason
DEREGISTER_REASON_ERROR: DeregisterReason
BARRIER_STATUS_UNSPECIFIED: BarrierStatus
BARRIER_STATUS_RELEASED: BarrierStatus
BARRIER_STATUS_MEMBERSHIP_CHANGED: BarrierStatus
BARRIER_STATUS_TIMEOUT: BarrierStatus
BARRIER_STATUS_WAITING: BarrierStatus
BARRIER_STATUS_MISSED: BarrierStatus
COMMIT_STATUS_UNSPECIFIED: CommitStatus
COMMIT_STATUS_ACCEPTED: CommitStatus
COMMIT_STATUS_DUPLICATE: CommitStatus
COMMIT_STATUS_SUPERSEDED: CommitStatus

class RequestHeader(_message.Message):
    __slots__ = ("job", "caller_id", "client_request_id")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job: str
    caller_id: str
    client_request_id: str
    def __init__(self, job: _Optional[str] = ..., caller_id: _Optional[str] = ..., client_request_id: _Optional[str] = ...) -> None: ...

class ResponseHeader(_message.Message):
    __slots__ = ("term", "generation", "replica_id", "is_leader", "leader_address")
    TERM_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    term: int
    generation: int
    replica_id: str
    is_leader: bool
    leader_address: str
    def __init__(self, term: _Optional[int] = ..., generation: _Optional[int] = ..., replica_id: _Optional[str] = ..., is_leader: _Optional[bool] = ..., leader_address: _Optional[str] = ...) -> None: ...

class Checksum(_message.Message):
    __slots__ = ("algorithm", "hex_digest")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    HEX_DIGEST_FIELD_NUMBER: _ClassVar[int]
    algorithm: ChecksumAlgorithm
    hex_digest: str
    def __init__(self, algorithm: _Optional[_Union[ChecksumAlgorithm, str]] = ..., hex_digest: _Optional[str] = ...) -> None: ...

class CheckpointPart(_message.Message):
    __slots__ = ("uri", "size_bytes", "checksum", "format_version", "manifest_uri", "replicated")
    URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_URI_FIELD_NUMBER: _ClassVar[int]
    REPLICATED_FIELD_NUMBER: _ClassVar[int]
    uri: str
    size_bytes: int
    checksum: Checksum
    format_version: int
    manifest_uri: str
    replicated: bool
    def __init__(self, uri: _Optional[str] = ..., size_bytes: _Optional[int] = ..., checksum: _Optional[_Union[Checksum, _Mapping]] = ..., format_version: _Optional[int] = ..., manifest_uri: _Optional[str] = ..., replicated: _Optional[bool] = ...) -> None: ...

class WorkerCheckpointPart(_message.Message):
    __slots__ = ("worker_id", "part")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    part: CheckpointPart
    def __init__(self, worker_id: _Optional[str] = ..., part: _Optional[_Union[CheckpointPart, _Mapping]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "num_shards", "vnodes", "load_factor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    VNODES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_shards: int
    vnodes: int
    load_factor: float
    def __init__(self, name: _Optional[str] = ..., num_shards: _Optional[int] = ..., vnodes: _Optional[int] = ..., load_factor: _Optional[float] = ...) -> None: ...

class CheckpointProgress(_message.Message):
    __slots__ = ("saves_in_flight", "commits_queued", "last_durable_step", "last_committed_step")
    SAVES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    COMMITS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    LAST_DURABLE_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMITTED_STEP_FIELD_NUMBER: _ClassVar[int]
    saves_in_flight: int
    commits_queued: int
    last_durable_step: int
    last_committed_step: int
    def __init__(self, saves_in_flight: _Optional[int] = ..., commits_queued: _Optional[int] = ..., last_durable_step: _Optional[int] = ..., last_committed_step: _Optional[int] = ...) -> None: ...

class WorkerBeat(_message.Message):
    __slots__ = ("worker_id", "incarnation", "sequence", "step", "samples_per_s", "checkpoint")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    incarnation: int
    sequence: int
    step: int
    samples_per_s: float
    checkpoint: CheckpointProgress
    def __init__(self, worker_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., sequence: _Optional[int] = ..., step: _Optional[int] = ..., samples_per_s: _Optional[float] = ..., checkpoint: _Optional[_Union[CheckpointProgress, _Mapping]] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("header", "worker_id", "capacity", "host", "pid", "labels", "client_version", "rendezvous_round")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_ROUND_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    worker_id: str
    capacity: float
    host: str
    pid: int
    labels: _containers.ScalarMap[str, str]
    client_version: str
    rendezvous_round: RendezvousRound
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., worker_id: _Optional[str] = ..., capacity: _Optional[float] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., client_version: _Optional[str] = ..., rendezvous_round: _Optional[_Union[RendezvousRound, _Mapping]] = ...) -> None: ...

class RendezvousRound(_message.Message):
    __slots__ = ("rdzv_id", "round", "world_size", "rank", "life")
    RDZV_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    LIFE_FIELD_NUMBER: _ClassVar[int]
    rdzv_id: str
    round: int
    world_size: int
    rank: int
    life: int
    def __init__(self, rdzv_id: _Optional[str] = ..., round: _Optional[int] = ..., world_size: _Optional[int] = ..., rank: _Optional[int] = ..., life: _Optional[int] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("header", "worker_id", "incarnation", "heartbeat_interval_s", "heartbeat_timeout_s", "job_life", "round_pending")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    JOB_LIFE_FIELD_NUMBER: _ClassVar[int]
    ROUND_PENDING_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    worker_id: str
    incarnation: int
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    job_life: str
    round_pending: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., worker_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ..., heartbeat_timeout_s: _Optional[float] = ..., job_life: _Optional[str] = ..., round_pending: _Optional[bool] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("header", "beat")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BEAT_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    beat: WorkerBeat
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., beat: _Optional[_Union[WorkerBeat, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("header", "status", "next_interval_s", "acked_sequence")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NEXT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    status: WorkerStatus
    next_interval_s: float
    acked_sequence: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., status: _Optional[_Union[WorkerStatus, str]] = ..., next_interval_s: _Optional[float] = ..., acked_sequence: _Optional[int] = ...) -> None: ...

class HeartbeatStreamRequest(_message.Message):
    __slots__ = ("header", "beat")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BEAT_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    beat: WorkerBeat
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., beat: _Optional[_Union[WorkerBeat, _Mapping]] = ...) -> None: ...

class HeartbeatStreamResponse(_message.Message):
    __slots__ = ("header", "status", "next_interval_s", "acked_sequence")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NEXT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    status: WorkerStatus
    next_interval_s: float
    acked_sequence: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., status: _Optional[_Union[WorkerStatus, str]] = ..., next_interval_s: _Optional[float] = ..., acked_sequence: _Optional[int] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("header", "worker_id", "incarnation", "reason", "detail")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    worker_id: str
    incarnation: int
    reason: DeregisterReason
    detail: str
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., worker_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., reason: _Optional[_Union[DeregisterReason, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ("header", "removed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    removed: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., removed: _Optional[bool] = ...) -> None: ...

class RegisterDatasetRequest(_message.Message):
    __slots__ = ("header", "name", "num_shards", "vnodes", "load_factor")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    VNODES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FACTOR_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    name: str
    num_shards: int
    vnodes: int
    load_factor: float
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., name: _Optional[str] = ..., num_shards: _Optional[int] = ..., vnodes: _Optional[int] = ..., load_factor: _Optional[float] = ...) -> None: ...

class RegisterDatasetResponse(_message.Message):
    __slots__ = ("header", "dataset", "created")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    dataset: Dataset
    created: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetShardsRequest(_message.Message):
    __slots__ = ("header", "dataset", "epoch", "worker_id")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    dataset: str
    epoch: int
    worker_id: str
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., dataset: _Optional[str] = ..., epoch: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

class GetShardsResponse(_message.Message):
    __slots__ = ("header", "shard_ids", "generation", "num_shards", "num_members", "max_member_shards", "min_member_shards")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SHARD_IDS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    NUM_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMBER_SHARDS_FIELD_NUMBER: _ClassVar[int]
    MIN_MEMBER_SHARDS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    shard_ids: _containers.RepeatedScalarFieldContainer[int]
    generation: int
    num_shards: int
    num_members: int
    max_member_shards: int
    min_member_shards: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., shard_ids: _Optional[_Iterable[int]] = ..., generation: _Optional[int] = ..., num_shards: _Optional[int] = ..., num_members: _Optional[int] = ..., max_member_shards: _Optional[int] = ..., min_member_shards: _Optional[int] = ...) -> None: ...

class BarrierRequest(_message.Message):
    __slots__ = ("header", "name", "worker_id", "generation", "timeout_s", "incarnation")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    name: str
    worker_id: str
    generation: int
    timeout_s: float
    incarnation: int
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., name: _Optional[str] = ..., worker_id: _Optional[str] = ..., generation: _Optional[int] = ..., timeout_s: _Optional[float] = ..., incarnation: _Optional[int] = ...) -> None: ...

class BarrierResponse(_message.Message):
    __slots__ = ("header", "status", "barrier_generation", "arrived", "expected", "missing_worker_ids")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BARRIER_GENERATION_FIELD_NUMBER: _ClassVar[int]
    ARRIVED_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    MISSING_WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    status: BarrierStatus
    barrier_generation: int
    arrived: int
    expected: int
    missing_worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., status: _Optional[_Union[BarrierStatus, str]] = ..., barrier_generation: _Optional[int] = ..., arrived: _Optional[int] = ..., expected: _Optional[int] = ..., missing_worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CommitCheckpointRequest(_message.Message):
    __slots__ = ("header", "step", "worker_id", "generation", "part", "incarnation", "job_life")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    JOB_LIFE_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    step: int
    worker_id: str
    generation: int
    part: CheckpointPart
    incarnation: int
    job_life: str
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., step: _Optional[int] = ..., worker_id: _Optional[str] = ..., generation: _Optional[int] = ..., part: _Optional[_Union[CheckpointPart, _Mapping]] = ..., incarnation: _Optional[int] = ..., job_life: _Optional[str] = ...) -> None: ...

class CommitCheckpointResponse(_message.Message):
    __slots__ = ("header", "status", "step_complete", "latest_complete_step")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEP_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    LATEST_COMPLETE_STEP_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    status: CommitStatus
    step_complete: bool
    latest_complete_step: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., status: _Optional[_Union[CommitStatus, str]] = ..., step_complete: _Optional[bool] = ..., latest_complete_step: _Optional[int] = ...) -> None: ...

class GetLatestCheckpointRequest(_message.Message):
    __slots__ = ("header", "before_step")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BEFORE_STEP_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    before_step: int
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., before_step: _Optional[int] = ...) -> None: ...

class GetLatestCheckpointResponse(_message.Message):
    __slots__ = ("header", "has_checkpoint", "step", "generation", "parts")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    HAS_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    has_checkpoint: bool
    step: int
    generation: int
    parts: _containers.RepeatedCompositeFieldContainer[WorkerCheckpointPart]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., has_checkpoint: _Optional[bool] = ..., step: _Optional[int] = ..., generation: _Optional[int] = ..., parts: _Optional[_Iterable[_Union[WorkerCheckpointPart, _Mapping]]] = ...) -> None: ...

class WatchLeaderRequest(_message.Message):
    __slots__ = ("header", "known_term", "wait_s")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KNOWN_TERM_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    known_term: int
    wait_s: float
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., known_term: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class WatchLeaderResponse(_message.Message):
    __slots__ = ("header", "leader", "changed")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    leader: LeaderInfo
    changed: bool
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., leader: _Optional[_Union[LeaderInfo, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ...) -> None: ...

class LeaderInfo(_message.Message):
    __slots__ = ("id", "address", "term")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    term: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., term: _Optional[int] = ...) -> None: ...

class ReplicaInfo(_message.Message):
    __slots__ = ("id", "address", "is_leader")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    is_leader: bool
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., is_leader: _Optional[bool] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "alive", "capacity", "last_heartbeat_age_s", "step", "samples_per_s", "shard_counts", "incarnation", "host", "pid", "checkpoint")
    class ShardCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNTS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    alive: bool
    capacity: float
    last_heartbeat_age_s: float
    step: int
    samples_per_s: float
    shard_counts: _containers.ScalarMap[str, int]
    incarnation: int
    host: str
    pid: int
    checkpoint: CheckpointProgress
    def __init__(self, id: _Optional[str] = ..., alive: _Optional[bool] = ..., capacity: _Optional[float] = ..., last_heartbeat_age_s: _Optional[float] = ..., step: _Optional[int] = ..., samples_per_s: _Optional[float] = ..., shard_counts: _Optional[_Mapping[str, int]] = ..., incarnation: _Optional[int] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., checkpoint: _Optional[_Union[CheckpointProgress, _Mapping]] = ...) -> None: ...

class BarrierInfo(_message.Message):
    __slots__ = ("name", "generation", "arrived", "expected")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ARRIVED_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    generation: int
    arrived: int
    expected: int
    def __init__(self, name: _Optional[str] = ..., generation: _Optional[int] = ..., arrived: _Optional[int] = ..., expected: _Optional[int] = ...) -> None: ...

class CheckpointSummary(_message.Message):
    __slots__ = ("step", "generation", "worker_ids")
    STEP_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    generation: int
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, step: _Optional[int] = ..., generation: _Optional[int] = ..., worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("header", "job", "leader", "replicas", "workers", "generation", "datasets", "open_barriers", "latest_checkpoint")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    OPEN_BARRIERS_FIELD_NUMBER: _ClassVar[int]
    LATEST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    job: str
    leader: LeaderInfo
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    generation: int
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    open_barriers: _containers.RepeatedCompositeFieldContainer[BarrierInfo]
    latest_checkpoint: CheckpointSummary
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., job: _Optional[str] = ..., leader: _Optional[_Union[LeaderInfo, _Mapping]] = ..., replicas: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., generation: _Optional[int] = ..., datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., open_barriers: _Optional[_Iterable[_Union[BarrierInfo, _Mapping]]] = ..., latest_checkpoint: _Optional[_Union[CheckpointSummary, _Mapping]] = ...) -> None: ...

class GetRendezvousStateRequest(_message.Message):
    __slots__ = ("header", "rendezvous_id")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_ID_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    rendezvous_id: str
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., rendezvous_id: _Optional[str] = ...) -> None: ...

class GetRendezvousStateResponse(_message.Message):
    __slots__ = ("header", "present", "state", "token", "created")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    present: bool
    state: bytes
    token: int
    created: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., present: _Optional[bool] = ..., state: _Optional[bytes] = ..., token: _Optional[int] = ..., created: _Optional[int] = ...) -> None: ...

class SetRendezvousStateRequest(_message.Message):
    __slots__ = ("header", "rendezvous_id", "state", "token")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    rendezvous_id: str
    state: bytes
    token: int
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., rendezvous_id: _Optional[str] = ..., state: _Optional[bytes] = ..., token: _Optional[int] = ...) -> None: ...

class SetRendezvousStateResponse(_message.Message):
    __slots__ = ("header", "has_set", "present", "state", "token")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    HAS_SET_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    has_set: bool
    present: bool
    state: bytes
    token: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., has_set: _Optional[bool] = ..., present: _Optional[bool] = ..., state: _Optional[bytes] = ..., token: _Optional[int] = ...) -> None: ...

class RendezvousStoreEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class RendezvousStoreSetRequest(_message.Message):
    __slots__ = ("header", "rendezvous_id", "entries")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    rendezvous_id: str
    entries: _containers.RepeatedCompositeFieldContainer[RendezvousStoreEntry]
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., rendezvous_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[RendezvousStoreEntry, _Mapping]]] = ...) -> None: ...

class RendezvousStoreSetResponse(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ...) -> None: ...

class RendezvousStoreGetRequest(_message.Message):
    __slots__ = ("header", "rendezvous_id", "keys", "wait_s")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    rendezvous_id: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    wait_s: float
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., rendezvous_id: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., wait_s: _Optional[float] = ...) -> None: ...

class RendezvousStoreGetResponse(_message.Message):
    __slots__ = ("header", "found", "values", "missing_keys")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MISSING_KEYS_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    found: bool
    values: _containers.RepeatedScalarFieldContainer[bytes]
    missing_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., found: _Optional[bool] = ..., values: _Optional[_Iterable[bytes]] = ..., missing_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class RendezvousStoreAddRequest(_message.Message):
    __slots__ = ("header", "rendezvous_id", "key", "delta")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RENDEZVOUS_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    rendezvous_id: str
    key: str
    delta: int
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., rendezvous_id: _Optional[str] = ..., key: _Optional[str] = ..., delta: _Optional[int] = ...) -> None: ...

class RendezvousStoreAddResponse(_message.Message):
    __slots__ = ("header", "value")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    header: ResponseHeader
    value: int
    def __init__(self, header: _Optional[_Union[ResponseHeader, _Mapping]] = ..., value: _Optional[int] = ...) -> None: ...
