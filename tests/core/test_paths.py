"""core.paths: the user data folder is the platform's (or $OPENATP_USER_DIR) and never
lies inside the installation, whatever the environment says."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from core import paths
from core.errors import InputError


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """A home folder of our own and none of the variables the rules read."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    for var in ("OPENATP_USER_DIR", "XDG_DATA_HOME", "APPDATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(paths, "_warned", set())  # every test sees its own first warning
    return home


@pytest.fixture
def frozen_bundle(monkeypatch, tmp_path):
    """Pretend to run from a PyInstaller bundle installed in <tmp>/opt/openatp."""
    bundle = tmp_path / "opt" / "openatp"
    (bundle / "_internal").mkdir(parents=True)
    exe = bundle / "openatp"
    exe.write_text("")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(exe))
    return bundle


@pytest.mark.parametrize("platform, env, expected", [
    ("linux", {}, "HOME/.local/share/OpenATP"),
    ("linux", {"XDG_DATA_HOME": "/data/xdg"}, "/data/xdg/OpenATP"),
    ("linux", {"XDG_DATA_HOME": "relative/xdg"}, "HOME/.local/share/OpenATP"),  # XDG: relative is invalid
    ("freebsd13", {}, "HOME/.local/share/OpenATP"),
    ("win32", {"APPDATA": "C:/Users/rt/AppData/Roaming"}, "C:/Users/rt/AppData/Roaming/OpenATP"),
    ("win32", {}, "HOME/AppData/Roaming/OpenATP"),
    ("darwin", {"XDG_DATA_HOME": "/ignored"}, "HOME/Library/Application Support/OpenATP"),
])
def test_platform_user_dir(platform, env, expected):
    home = Path("/home/planner")
    got = paths.platform_user_dir(platform=platform, env=env, home=home)
    assert got == Path(expected.replace("HOME", str(home)))


def test_env_variable_wins_and_is_not_created(clean_env, monkeypatch, tmp_path):
    target = tmp_path / "clinic" / "openatp-data"
    monkeypatch.setenv("OPENATP_USER_DIR", str(target))
    assert paths.user_data_dir() == target
    assert not target.exists()  # asking never creates
    assert paths.user_data_dir(create=True) == target and target.is_dir()


@pytest.mark.skipif(sys.platform.startswith(("win", "darwin")),
                    reason="Linux layout checked here; the others by test_platform_user_dir")
def test_default_is_the_platform_folder(clean_env):
    assert paths.user_data_dir() == clean_env / ".local" / "share" / "OpenATP"


def test_source_checkout_protects_packages_not_the_whole_checkout():
    root = Path(paths.__file__).resolve().parents[1]
    assert paths.install_dir() == root
    assert paths.resource_dir() == root / "resources"
    assert paths.is_inside_install(root / "resources" / "protocols" / "mine")
    assert paths.is_inside_install(root / "core")
    assert not paths.is_inside_install(root / "out" / "userdata")


@pytest.mark.parametrize("where", ["resources/user", "core", "app/../widgets/x"])
def test_env_pointing_into_the_package_falls_back_to_home(clean_env, monkeypatch, caplog, where):
    inside = paths.install_dir() / where
    monkeypatch.setenv("OPENATP_USER_DIR", str(inside))
    with caplog.at_level(logging.WARNING, logger="openatp.paths"):
        got = paths.user_data_dir()
    assert got == clean_env / "OpenATP"
    assert not paths.is_inside_install(got)
    assert "inside the OpenATP installation" in caplog.text and "OPENATP_USER_DIR" in caplog.text
    with caplog.at_level(logging.WARNING, logger="openatp.paths"):
        paths.user_data_dir()
    assert caplog.text.count("inside the OpenATP installation") == 1  # said once, not on every call


def test_frozen_bundle_protects_the_whole_installation(clean_env, frozen_bundle, monkeypatch, tmp_path):
    assert paths.is_frozen() and paths.install_dir() == frozen_bundle
    assert paths.protected_dirs() == [frozen_bundle]
    # a sibling sharing the name's prefix is not inside (no string-prefix comparison)
    sibling = tmp_path / "opt" / "openatp-data"
    monkeypatch.setenv("OPENATP_USER_DIR", str(sibling))
    assert paths.user_data_dir() == sibling
    for bad in (frozen_bundle, frozen_bundle / "data", frozen_bundle / "_internal" / "resources"):
        monkeypatch.setenv("OPENATP_USER_DIR", str(bad))
        assert paths.user_data_dir() == clean_env / "OpenATP"
    # the platform rule can point inside too (XDG_DATA_HOME set to the install folder)
    monkeypatch.delenv("OPENATP_USER_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(frozen_bundle))
    if not sys.platform.startswith(("win", "darwin")):
        assert paths.user_data_dir() == clean_env / "OpenATP"


def test_symlink_into_the_installation_is_caught(clean_env, frozen_bundle, monkeypatch, tmp_path):
    link = tmp_path / "innocent-looking"
    link.symlink_to(frozen_bundle / "_internal", target_is_directory=True)
    monkeypatch.setenv("OPENATP_USER_DIR", str(link / "data"))
    assert paths.user_data_dir() == clean_env / "OpenATP"


def test_home_inside_installation_uses_temp_folder(frozen_bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(frozen_bundle / "home"))
    monkeypatch.setenv("OPENATP_USER_DIR", str(frozen_bundle / "data"))
    got = paths.user_data_dir()
    assert not paths.is_inside_install(got) and got.name.startswith("OpenATP-")


def test_relative_env_is_made_absolute(clean_env, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENATP_USER_DIR", "rel/data")
    assert paths.user_data_dir() == tmp_path / "rel" / "data"


def test_never_inside_install_over_many_environments(clean_env, frozen_bundle, monkeypatch, tmp_path):
    """Every combination of the variables the rules read: the answer is never inside."""
    choices = [None, str(frozen_bundle), str(frozen_bundle / "x"), str(tmp_path / "ok"), "rel"]
    monkeypatch.chdir(frozen_bundle)  # makes "rel" resolve inside the installation
    for user_dir in choices:
        for xdg in choices:
            for var, value in (("OPENATP_USER_DIR", user_dir), ("XDG_DATA_HOME", xdg)):
                if value is None:
                    monkeypatch.delenv(var, raising=False)
                else:
                    monkeypatch.setenv(var, value)
            got = paths.user_data_dir()
            assert got.is_absolute() and not paths.is_inside_install(got), (user_dir, xdg, got)


def test_user_subdir_creates_and_rejects(clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENATP_USER_DIR", str(tmp_path / "u"))
    logs = paths.user_subdir("logs")
    assert logs == tmp_path / "u" / "logs" and logs.is_dir()
    assert paths.user_subdir("crash", create=False) == tmp_path / "u" / "crash-reports"
    with pytest.raises(InputError, match="unknown kind of user data 'cache'"):
        paths.user_subdir("cache")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OPENATP_USER_DIR", str(blocker))
    with pytest.raises(InputError, match="cannot create the OpenATP logs folder.*OPENATP_USER_DIR"):
        paths.user_subdir("logs")


def test_protocol_templates_use_core_paths(clean_env, monkeypatch, tmp_path):
    from core.goals.templates import builtin_protocol_dir, user_protocol_dir

    assert builtin_protocol_dir() == paths.resource_dir() / "protocols"
    assert (builtin_protocol_dir() / "hn.json").is_file()
    monkeypatch.setenv("OPENATP_USER_DIR", str(tmp_path / "u"))
    assert user_protocol_dir() == tmp_path / "u" / "protocols"
    monkeypatch.setenv("OPENATP_USER_DIR", str(builtin_protocol_dir()))  # a tempting mistake
    assert user_protocol_dir() == clean_env / "OpenATP" / "protocols"
