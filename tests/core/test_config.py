import pytest
from ingestd.daemon.core.config import ConfigError, load_config, parse_size

pytestmark = pytest.mark.unit


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_repository_config_is_valid():
    config = load_config("config.toml", environ={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.storage.chunk_size == 1 << 20
    assert config.storage.durability == "fsync"


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "[server]\nport = 8000\n[storage]\nchunk_size = 4096\n")
    config = load_config(
        path,
        environ={
            "INGESTD_SERVER_PORT": "9001",
            "INGESTD_STORAGE_CHUNK_SIZE": "2 MiB",
            "INGESTD_STORAGE_DURABILITY": "none",
        },
    )
    assert config.server.port == 9001
    assert config.storage.chunk_size == 2 << 20
    assert config.storage.durability == "none"


def test_seed_variables_are_honoured_below_ingestd_ones(tmp_path):
    env = {
        "UPLOADS_DIR": str(tmp_path / "up"),
        "COMPLETED_DIR": str(tmp_path / "done"),
        "CHUNK_SIZE": "524288",
    }
    config = load_config(None, environ=env)
    assert config.data_dir == tmp_path / "up"
    assert config.completed_dir == tmp_path / "done"
    assert config.storage.chunk_size == 524288
    config = load_config(None, environ={**env, "INGESTD_STORAGE_CHUNK_SIZE": "1024"})
    assert config.storage.chunk_size == 1024


def test_command_line_overrides_environment():
    config = load_config(
        None,
        environ={"INGESTD_SERVER_PORT": "9001"},
        overrides={("server", "port"): 9002, ("server", "host"): None},
    )
    assert config.server.port == 9002 and config.server.host == "127.0.0.1"


def test_the_s3_table_from_the_file_and_the_environment(tmp_path):
    text = "[storage]\nbackend = 's3'\n[storage.s3]\nbucket = 'b'\nprefix = 'p/'\n"
    env = {"INGESTD_STORAGE_S3_ENDPOINT": "http://127.0.0.1:9", "INGESTD_STORAGE_S3_PREFIX": "q/"}
    config = load_config(write(tmp_path, text), environ=env)
    s3 = config.storage.s3
    assert (config.storage.backend, s3.bucket, s3.prefix) == ("s3", "b", "q/")
    assert s3.endpoint == "http://127.0.0.1:9" and s3.access_key_id == ""
    assert load_config(None, environ={}).storage.backend == "local"


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("[server]\nport = 'eighty'\n", {}, "server.port"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ("[storage]\ndurability = 'sometimes'\n", {}, "storage.durability"),
        ("[storage]\nchunk_sise = 10\n", {}, "chunk_sise"),
        ("[strage]\n", {}, "[strage]"),
        ("", {"INGESTD_SERVER_PROT": "1"}, "server.prot"),
        ("", {"INGESTD_LIMITS_MAX_FILE_SIZE": "lots"}, "limits.max_file_size"),
        ("[storage]\nchunk_size = '128 MiB'\n", {}, "storage.chunk_size"),
        ("[server]\nhost = '0.0.0.0'\n[auth]\nrequired = false\n", {}, "auth.required"),
        ("[server]\nhost = '10.1.2.3'\n", {"INGESTD_AUTH_REQUIRED": "false"}, "auth.required"),
        ("[server]\ncertfile = 'nope.pem'\nkeyfile = 'nope.key'\n", {}, "server.certfile"),
        ("[server]\ncertfile = 'nope.pem'\n", {}, "server.keyfile"),
        ("[auth]\ndedup_scope = 'everyone'\n", {}, "auth.dedup_scope"),
        ("[quotas]\nmax_bytes = 'lots'\n", {}, "quotas.max_bytes"),
        ("[quotas.tenants.a]\nmax_bytes = 'lots'\n", {}, "quotas.tenants.a.max_bytes"),
        ("[server\n", {}, "not valid TOML"),
        ("[storage]\nbackend = 's3'\n", {}, "storage.s3.bucket"),
        ("[storage]\nbackend = 'tape'\n", {}, "storage.backend"),
        ("[storage.s3]\nbuckit = 'b'\n", {}, "buckit"),
        ("", {"INGESTD_STORAGE_S3_BUCKIT": "b"}, "storage.s3_buckit"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text, env, names):
    with pytest.raises(ConfigError, match=__import__("re").escape(names)):
        load_config(write(tmp_path, text), environ=env)


def test_auth_defaults_follow_the_bind_address(tmp_path):
    loopback = load_config(write(tmp_path, ""), environ={})
    assert not loopback.auth_required
    assert load_config(write(tmp_path, ""), environ={"INGESTD_AUTH_REQUIRED": "true"}).auth_required
    network = load_config(write(tmp_path, "[server]\nhost = '0.0.0.0'\n"), environ={})
    assert network.auth_required  # on by default off loopback
    quotas = load_config(
        write(
            tmp_path, "[quotas]\nmax_bytes = '1 GiB'\n[quotas.tenants.big]\nmax_bytes = '2 GiB'\n"
        ),
        environ={},
    )
    assert quotas.quotas.max_bytes == 1 << 30
    assert quotas.quotas.tenants["big"].max_bytes == 2 << 30


def test_parse_size():
    assert parse_size("64MiB") == 64 << 20
    assert parse_size("1 GB") == 10**9
    assert parse_size("12") == 12
    with pytest.raises(ValueError):
        parse_size("12 parsecs")
