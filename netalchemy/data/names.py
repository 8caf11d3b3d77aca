"""Validation of a dataset's `data.name`, its config and version, and of `data.data_dir`.

`data.name` is a TFDS name, `name[/config][:version]` (version parts may be `*`; no path
separators). Bad names, configs, versions and data folders raise a one-line `DataError`,
before anything is written; `netalchemy.data.load` checks them before preparing a dataset.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from typing import Any

import tensorflow_datasets as tfds

from netalchemy.data.errors import DataError

KNOWN = "mnist1d, fashion_mnist, or a TFDS name such as mnist, cifar10, cats_vs_dogs"

# TFDS's name syntax, name[/config][:version] (version parts may be *), and nothing else.
_NAME = re.compile(r"(?P<name>[A-Za-z0-9_]+)(?:/(?P<config>[A-Za-z0-9_][A-Za-z0-9_.\-]*))?"
                   r"(?::(?P<version>(?:\d+|\*)(?:\.(?:\d+|\*)){2}))?")


def parse_name(name: str) -> tuple[str, str, str]:
    """(name, config, version) of a TFDS dataset name `name[/config][:version]`.

    Missing parts are "". Raises `DataError` for anything else (a path, spaces, ...).
    """
    match = _NAME.fullmatch(name)
    if not match:
        raise DataError(f"data.name={name!r} is not a dataset name: expected "
                        f"name[/config][:version] (letters, digits, _), e.g. mnist or "
                        f"fashion_mnist:1.0.0")
    return match["name"], match["config"] or "", match["version"] or ""


def base_name(name: str) -> str:
    """The `name` part of `name[/config][:version]`; a malformed name is returned as is."""
    match = _NAME.fullmatch(name)
    return match["name"] if match else name


def check_data_dir(path: str, *, writable: bool, default: bool = False) -> None:
    """Raises `DataError` unless `path` is a folder, created if missing, and writable if asked.

    `default`: the path is TFDS's default data folder, not the user's `data.data_dir`.
    """
    shown = f"TFDS's data folder {path}" if default else f"data.data_dir={path}"
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{shown} is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DataError(f"{shown} cannot be created ({e.strerror or e})") from None
    if writable:
        try:  # os.access says yes to root even where nothing can be written (/proc)
            os.rmdir(tempfile.mkdtemp(prefix=".netalchemy-probe-", dir=path))
        except OSError as e:
            raise DataError(f"{shown} is not writable (making a folder in it: "
                            f"{e.strerror or e}); set data.data_dir to a folder you can "
                            f"write") from None


def check_own_version(base: str, cls: Any, config: str, version: str) -> None:
    """Raises `DataError` unless `config` is "" and `version` is "" or matches `cls.VERSION`.

    For this project's builders (`cls` a TFDS builder class without configs).
    """
    if config:
        raise DataError(f"dataset {base!r} has no config {config!r} (it has no configs)")
    if version and not cls.VERSION.match(version):
        raise DataError(f"dataset {base!r} has no version {version} "
                        f"(available: {cls.VERSION})")


def unknown_name_error(base: str, own_names: list[str]) -> DataError:
    """A one-line DataError for a name that neither `own_names` nor TFDS knows, with a hint."""
    names = [*own_names, *tfds.list_builders(with_community_datasets=False)]
    close = difflib.get_close_matches(base, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DataError(f"unknown dataset {base!r}{hint}; known: {KNOWN}")


def version_or_config_error(base: str, config: str, version: str, e: Exception) -> DataError:
    """A one-line DataError for `tfds.builder`'s refusal of a version or config."""
    cls = tfds.builder_cls(base)
    configs = [c.name for c in getattr(cls, "BUILDER_CONFIGS", [])]
    if config and config not in configs:
        listed = ", ".join(configs[:12]) + (", ..." if len(configs) > 12 else "")
        return DataError(f"dataset {base!r} has no config {config!r} "
                         f"({'configs: ' + listed if configs else 'it has no configs'})")
    if version:
        versions = sorted({str(v) for v in (cls.VERSION, *cls.SUPPORTED_VERSIONS) if v},
                          key=lambda v: tuple(map(int, v.split("."))))
        return DataError(f"dataset {base!r} has no version {version} "
                         f"(available: {', '.join(versions) or 'unknown'})")
    return DataError(f"dataset {base!r}: {str(e).splitlines()[0][:200]}")
