# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Controller-side filters for the fleet playbooks and roles.

``jmespath``: query fleet facts with a jmespath expression (the status report), without
depending on community.general.  ``distro_plan``: the package names, paths and commands of
``module_utils/_kbuild/distro.py`` for a kernel release, so the ``debuginfo`` role computes
exactly what the builder expects instead of keeping a second copy of that knowledge.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import dataclasses

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_native

try:
    import jmespath
    HAS_JMESPATH = True
except ImportError:  # reported when the filter is used
    HAS_JMESPATH = False

from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.distro import plan_for
from ansible_collections.kpatch.livepatch.plugins.module_utils._kbuild.steplog import KbuildError


def _plain(value):
    """Ansible's lazy containers and tuples → plain lists and dicts jmespath understands."""
    if isinstance(value, dict):
        return dict((str(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def jmespath_search(data, expression):
    """``data | kpatch.livepatch.jmespath('expr')``: the jmespath result (None when nothing matches)."""
    if not HAS_JMESPATH:
        raise AnsibleFilterError("kpatch.livepatch.jmespath needs the Python jmespath package on the controller")
    try:
        return jmespath.search(to_native(expression), _plain(data))
    except jmespath.exceptions.JMESPathError as exc:
        raise AnsibleFilterError("jmespath expression %r failed: %s" % (expression, to_native(exc)))


def distro_plan(release, distro, version, package_version=None, workdir="/var/tmp/kpatch-livepatch"):
    """``release | kpatch.livepatch.distro_plan(distro_id, version_id)``: the build inputs' plan as a dict."""
    try:
        plan = plan_for(to_native(distro), to_native(version), to_native(release),
                        package_version=to_native(package_version) if package_version else None,
                        workdir=to_native(workdir))
    except KbuildError as exc:
        raise AnsibleFilterError(to_native(exc))
    return _plain(dataclasses.asdict(plan))


class FilterModule(object):
    def filters(self):
        return {"jmespath": jmespath_search, "distro_plan": distro_plan}
