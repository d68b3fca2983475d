"""Inventory.render: the direct substitution of plain templates gives exactly what Ansible's
templar gives, and every other template goes to the templar."""

from __future__ import annotations

import pytest

from rollout_py.errors import InputError
from rollout_py.inventory import Inventory, substitute

INVENTORY = """\
[app]
app01 ansible_host=10.0.0.5 port=8080 ratio=1.5 flag=true empty='' words='a b' accent='café'
app01 name_tpl='{{ ansible_host }}-x' items='[1, 2]'

[app:vars]
group_value=from-group
"""

# (template, substituted directly?)
CASES = [
    ("http://{{ ansible_host }}:8080/health", True),
    ("http://{{ansible_host}}:{{ port }}/version", True),
    ("{{ ansible_host }}", True),
    ("{{ inventory_hostname }}", True),
    ("{{ port }}", True),
    ("{{ ratio }}", True),
    ("x{{ empty }}y", True),
    ("[{{ words }}]", True),
    ("{x}{{ words }}", False),  # braces in the literal text
    ("{{ accent }}/{{ group_value }}", True),
    ("{{ rollout_version }}", True),
    ("plain text, no template", True),
    ("", True),
    ("{{ name_tpl }}", False),  # its value is a template: the templar renders it
    ("{{ items }}", False),
    ("{{ flag }}", True),  # INI gives the text "true"
    ("{{ switched_on }}", False),  # a boolean
    ("{{ ansible_host | upper }}", False),
    ("{{ ansible_host ~ '/x' }}", False),
    ("{% if port %}{{ ansible_host }}{% endif %}", False),
    ("{# note #}{{ ansible_host }}", False),
    ("{{ ansible_host }}\n", False),
    ("a }} b {{ ansible_host }}", False),
]


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    path = tmp_path_factory.mktemp("inv") / "hosts.ini"
    path.write_text(INVENTORY)
    return Inventory(path)


@pytest.mark.parametrize(("template", "direct"), CASES)
def test_render_is_what_the_templar_gives(inventory: Inventory, template: str,
                                          direct: bool) -> None:
    host = inventory.select("app")[0]
    extra = {"rollout_version": "2.0", "switched_on": True}
    variables = {**host.vars, **extra}
    assert (substitute(template, variables) is not None) is direct
    assert inventory.render(template, host, extra) == \
        inventory.render_with_templar(template, host, variables)


@pytest.mark.parametrize("template", ["{{ nowhere }}", "http://{{ nowhere }}:8080/"])
def test_an_undefined_variable_is_the_templars_error(inventory: Inventory,
                                                     template: str) -> None:
    host = inventory.select("app")[0]
    assert substitute(template, host.vars) is None
    with pytest.raises(InputError, match="nowhere"):
        inventory.render(template, host)
