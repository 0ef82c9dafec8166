"""BRIDGE_CALLBACK_HOSTS: parsing (strict) and matching (names, wildcards, CIDRs), pure."""

from __future__ import annotations

import ipaddress

import pytest

from bridge.callback_hosts import CallbackHosts, HostPattern, parse_callback_hosts
from bridge.settings import SettingsError, load

# -- parsing ---------------------------------------------------------------------------------


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        (
            "127.0.0.0/8,::1/128,localhost",
            (
                HostPattern(None, network=net("127.0.0.0/8")),
                HostPattern(None, network=net("::1/128")),
                HostPattern(None, name="localhost"),
            ),
        ),
        (" Hooks.Example.COM. ", (HostPattern(None, name="hooks.example.com"),)),
        ("alpha:*.example.com", (HostPattern("alpha", suffix=".example.com"),)),
        ("beta: Bücher.de", (HostPattern("beta", name="xn--bcher-kva.de"),)),
        ("*.xn--bcher-kva.de", (HostPattern(None, suffix=".xn--bcher-kva.de"),)),
        ("10.20.0.0/16", (HostPattern(None, network=net("10.20.0.0/16")),)),
        ("192.0.2.10", (HostPattern(None, network=net("192.0.2.10/32")),)),
        ("fd00::/8", (HostPattern(None, network=net("fd00::/8")),)),
        ("[fd00::]/8", (HostPattern(None, network=net("fd00::/8")),)),
        ("alpha:::1/128", (HostPattern("alpha", network=net("::1/128")),)),
        ("alpha:[fd00::]/8", (HostPattern("alpha", network=net("fd00::/8")),)),
        ("alpha:10.0.0.0/8", (HostPattern("alpha", network=net("10.0.0.0/8")),)),
        ("my_host.internal", (HostPattern(None, name="my_host.internal"),)),
        ("a.example, a.example", (HostPattern(None, name="a.example"),)),
    ],
)
def test_parse(text: str, expected: tuple[HostPattern, ...]) -> None:
    assert parse_callback_hosts(text) == CallbackHosts(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "10.20.30.40/16",
            r"^10\.20\.30\.40/16 has host bits set; did you mean 10\.20\.0\.0/16\?$",
        ),
        ("alpha:10.20.30.40/1", r"has host bits set; did you mean 0\.0\.0\.0/1\?$"),
        ("fd00::1/8", r"has host bits set; did you mean fd00::/8\?$"),
        ("alpha:[fd00::1]/8", r"has host bits set; did you mean fd00::/8\?$"),
        ("10.0.0.0/33", "invalid network"),
        ("127.1", "invalid network"),
        ("*", "'\\*' alone would allow every host"),
        ("*.", "'\\*' alone would allow every host"),
        ("a.*.example", "a wildcard is only"),
        ("*example.com", "a wildcard is only"),
        ("*.*.example.com", "is not a host name"),
        ("bad name.example", "is not a host name"),
        ("-bad.example", "is not a host name"),
        ("a..example", "is not a host name"),
        ("example.com/path", "is not a host name"),
        ("alpha:", "is not a host name"),
        ("localhost,", "an empty entry"),
        ("a.example,,b.example", "an empty entry"),
        ("[10.0.0.0]/8", "brackets are for IPv6"),
        ("x" * 64 + ".example", "is not a host name"),
        ("fd00:fd00::/32", r"reads both as the network fd00:fd00::/32 and as tenant 'fd00'"),
        ("bad tenant:example.com", "is not a host name"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_callback_hosts(text)


# -- matching --------------------------------------------------------------------------------

LOOPBACK = parse_callback_hosts("127.0.0.0/8,::1/128,localhost")


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8080/hook", True),
        ("http://127.9.9.9/", True),
        ("http://[::1]:9/", True),
        ("http://localhost:9/", True),
        ("http://LOCALHOST./", True),
        ("http://user:pw@localhost/", True),
        # IP literals in any spelling the network policy reads
        ("http://0x7f.1/", True),
        ("http://2130706433/", True),
        ("http://0177.0.0.1/", True),
        ("http://127.1/", True),
        ("http://[::ffff:127.0.0.1]/", True),
        ("http://[::ffff:0:127.0.0.1]/", True),
        ("http://[64:ff9b::7f00:1]/", True),
        ("http://[0:0:0:0:0:0:0:1]/", True),
        # outside
        ("http://128.0.0.1/", False),
        ("http://8.8.8.8/", False),
        ("http://[::2]/", False),
        ("http://localhost.example/", False),
        ("http://sub.localhost/", False),
        ("http://localhost@8.8.8.8/", False),  # the host follows the last '@'
        ("http://127.0.0.1.nip.io/", False),  # a name, however it resolves
        ("not a url", False),
        ("http:///nohost", False),
    ],
)
def test_loopback_list(url: str, ok: bool) -> None:
    assert LOOPBACK.allows("alpha", url) is ok


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://a.example.com/", True),
        ("https://deep.a.example.com/", True),
        ("https://A.EXAMPLE.COM./", True),
        ("https://example.com/", False),  # the domain itself is not a subdomain
        ("https://badexample.com/", False),
        ("https://example.com.evil.test/", False),
        ("https://xn--bcher-kva.de/", True),  # exact, IDNA-normalized either way
        ("https://BÜCHER.de/", True),
        ("https://www.bücher.de/", False),
        ("https://10.1.2.3/", True),
        ("https://[::ffff:10.1.2.3]/", True),
        ("https://0x0a.1.2.3/", True),
        ("https://11.0.0.1/", False),
    ],
)
def test_names_wildcards_and_networks(url: str, ok: bool) -> None:
    hosts = parse_callback_hosts("*.example.com,bücher.de,10.0.0.0/8")
    assert hosts.allows("alpha", url) is ok


def test_a_cidr_never_matches_a_name() -> None:
    hosts = parse_callback_hosts("127.0.0.0/8")
    assert not hosts.allows("alpha", "http://localhost/")


def test_entries_apply_to_their_tenant_and_untenanted_ones_to_all() -> None:
    hosts = parse_callback_hosts("alpha:*.alpha.example, beta:hooks.beta.example")
    assert hosts.allows("alpha", "https://x.alpha.example/")
    assert not hosts.allows("alpha", "https://hooks.beta.example/")
    assert hosts.allows("beta", "https://hooks.beta.example/")
    assert not hosts.allows("beta", "https://x.alpha.example/")
    assert hosts.allows("gamma", "https://anything.test/")  # no entries: unrestricted

    shared = parse_callback_hosts("alpha:*.alpha.example, shared.example")
    assert shared.allows("alpha", "https://shared.example/")
    assert shared.allows("alpha", "https://x.alpha.example/")
    assert shared.allows("gamma", "https://shared.example/")
    assert not shared.allows("gamma", "https://x.alpha.example/")  # restricted by the shared one


def test_no_entries_is_unrestricted() -> None:
    assert CallbackHosts().allows("alpha", "https://anything.test/")


# -- the setting -----------------------------------------------------------------------------

KEYS = {"BRIDGE_API_KEYS": "alpha:alpha-secret-1234,beta:beta-secret-5678"}


def test_the_setting_and_its_flag() -> None:
    assert load({}).callback_hosts == CallbackHosts()
    s = load({**KEYS, "BRIDGE_CALLBACK_HOSTS": "alpha:*.alpha.example,127.0.0.0/8"})
    assert s.callback_hosts == parse_callback_hosts("alpha:*.alpha.example,127.0.0.0/8")
    flagged = load({**KEYS, "BRIDGE_CALLBACK_HOSTS": "x.example"}, {"callback_hosts": "y.example"})
    assert flagged.callback_hosts == parse_callback_hosts("y.example")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.20.30.40/16", "10.20.30.40/16 has host bits set; did you mean 10.20.0.0/16?"),
        ("*", "'*': '*' alone would allow every host; name a domain"),
        (
            "gamma:hooks.example",
            "names tenant 'gamma', which has no key in BRIDGE_API_KEYS; refused rather than "
            "ignored, since a misspelt tenant could be left unrestricted",
        ),
    ],
)
def test_a_bad_entry_is_a_bad_value_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load({**KEYS, "BRIDGE_CALLBACK_HOSTS": value})
    assert str(info.value) == f"BRIDGE_CALLBACK_HOSTS: {message}"


def test_tenant_names_are_checked_against_the_tenants_there_are() -> None:
    # Without API keys (migrate, secret) there is nothing to check against; with
    # --insecure-no-auth the one tenant is 'default'.
    load({"BRIDGE_CALLBACK_HOSTS": "gamma:hooks.example"})
    load({"BRIDGE_CALLBACK_HOSTS": "default:hooks.example"}, {"insecure_no_auth": True})
    with pytest.raises(SettingsError, match="names tenant 'gamma'"):
        load({"BRIDGE_CALLBACK_HOSTS": "gamma:hooks.example"}, {"insecure_no_auth": True})
