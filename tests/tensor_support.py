"""Bit-for-bit comparison of checkpointed states, for the checkpoint tests."""

from __future__ import annotations

import torch


def raw_bytes(tensor: torch.Tensor) -> bytes:
    value = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
    if value.numel() == 0:
        return b""
    return bytes(value.reshape(-1).view(torch.uint8).numpy().tobytes())


def assert_bit_exact(loaded: object, expected: object, where: str = "state") -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(loaded, torch.Tensor), where
        assert (loaded.dtype, loaded.shape) == (expected.dtype, expected.shape), where
        assert raw_bytes(loaded) == raw_bytes(expected), f"{where}: bytes differ"
    elif isinstance(expected, dict):
        assert isinstance(loaded, dict) and list(loaded) == list(expected), where
        for key, value in expected.items():
            assert_bit_exact(loaded[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert type(loaded) is type(expected) and len(loaded) == len(expected), where
        for i, (got, value) in enumerate(zip(loaded, expected, strict=True)):
            assert_bit_exact(got, value, f"{where}[{i}]")
    else:
        assert loaded == expected and type(loaded) is type(expected), where
