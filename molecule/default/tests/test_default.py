"""Checks app_release left release 2.0 installed, current and serving."""

import time

testinfra_hosts = ["ansible://app"]

# Run on the host itself: the app binds the host's own address.
FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())"
)


def test_release_dir(host):
    release = host.file("/srv/app/releases/2.0")
    assert release.is_directory
    assert host.file("/srv/app/releases/2.0/app.py").is_file


def test_current_points_at_release(host):
    current = host.file("/srv/app/current")
    assert current.is_symlink
    assert current.linked_to == "/srv/app/releases/2.0"


def test_app_serves_version(host):
    address = host.ansible.get_variables()["ansible_host"]
    url = f"http://{address}:8080/version"
    deadline = time.monotonic() + 15
    while True:
        result = host.run("/usr/bin/python3 -c %s %s", FETCH, url)
        if result.rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "2.0"


def test_second_release_stays_installed_after_the_rollback(host):
    assert host.file("/srv/app/releases/3.0/app.py").is_file
    assert host.file("/srv/app/releases/3.0/.app_release_complete").is_file
