"""Shared test set-up: no network, a private cache, and the read-only data beside the checkout."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Set before transferlab or huggingface_hub are imported: hub lookups stay in the local cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Feature caches go to a folder of this test session, never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("transferlab-cache")
    os.environ["TRANSFERLAB_CACHE"] = str(path)
    return path


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open an internet connection fails the test that made it; this machine's
    own loopback address (a server a test started) stays reachable."""
    real_connect, real_create = socket.socket.connect, socket.create_connection

    def refuse(address):
        raise AssertionError(f"test tried to reach the network: {address}")

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            refuse(address)
        return real_connect(sock, address)

    def guarded_create(address, *args, **kwargs):
        if address[0] not in LOOPBACK:
            refuse(address)
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection", guarded_create)


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared/data beside the checkout")
    return path


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    return _shared("hymenoptera")


@pytest.fixture(scope="session")
def cifar10_small() -> Path:
    return _shared("cifar10-small")


@pytest.fixture(scope="module")
def small_set(hymenoptera, tmp_path_factory) -> Path:
    """Ten real ants and ten real bees (a copy per test module): enough for a quick real run."""
    root = tmp_path_factory.mktemp("ants-bees")
    for cls in ("ants", "bees"):
        (root / cls).mkdir()
        for f in sorted((hymenoptera / "train" / cls).glob("*.jpg"))[:10]:
            shutil.copy(f, root / cls / f.name)
    return root


COLOURS = {"red": (210, 35, 35), "green": (35, 190, 35), "blue": (35, 35, 210)}


def _colour_folder(root: Path, classes=("red", "blue"), per_class: int = 8, size: int = 24,
                   noise: int = 30) -> Path:
    """A class-folder tree of small noisy images whose class is their colour: learnable in seconds."""
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            jitter = rng.integers(-noise, noise, (size, size, 3))
            pixels = np.clip(np.array(COLOURS[cls]) + jitter, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def colour_folder():
    """Factory: colour_folder(root, classes=..., per_class=..., size=...) -> the folder."""
    return _colour_folder


# ---------------------------------------------------------------------------- a real browser

def _install_chromium() -> None:
    install = ["apt-get", "install", "-y", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:  # a stale package list is the usual cause; refresh once and retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=600)
        done = subprocess.run(install, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        pytest.fail("chromium is not installed and `apt-get install -y chromium` failed:\n"
                    + done.stderr[-3000:])


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path; installed with apt-get when missing, since this test must not skip."""
    if shutil.which("chromium") is None:
        try:
            _install_chromium()
        except (OSError, subprocess.TimeoutExpired) as error:
            pytest.fail(f"chromium is not installed and installing it failed: {error}")
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is still not on PATH after `apt-get install -y chromium`")
    return path
