# -*- coding: utf-8 -*-
# Copyright: kpatch.livepatch contributors
# GNU General Public License v2.0+ (see COPYING or https://www.gnu.org/licenses/gpl-2.0.txt)
"""Verification pass: refuse patches that cannot be applied safely as a livepatch.

Every refusal raises :class:`PatchRejected` with a message naming the function
or section and saying why, so the build can show it to the patch author
unchanged.  Checks run on the compared/included model; the key check for jump
labels and static calls runs after lookup, because only then is it known
where a key lives.
"""

from __future__ import annotations

from ansible_collections.kpatch.livepatch.plugins.module_utils._elf.model import (
    R_X86_64_PC32,
    R_X86_64_PLT32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHT_GROUP,
    SHT_NOBITS,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Status,
    Symbol,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.correlate import (
    family_relocations,
    is_call_site_data,
    is_special_static,
    is_static_local,
    strip_number,
)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.errors import PatchRejected  # noqa: F401 (re-exported)
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.special import KeptKey, special_section_names
from ansible_collections.kpatch.livepatch.plugins.module_utils._engine.stride import relocation_width

TYPE_CHECKING = False  # the annotations are strings: typing's import stays off the engine's start-up
if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Set

FENTRY = "__fentry__"
# Bytes from a function's start within which the fentry call must sit (endbr64 + call).
FENTRY_WINDOW = 16
_IGNORED_DATA_PREFIXES = (".rodata.str", ".rodata.cst", ".discard",
                          "__ksymtab", "___ksymtab", ".kpatch.", ".note", ".comment", ".modinfo",
                          "__param", ".init.", ".exit.", "__tracepoints_strings", "__bpf_raw_tp_map",
                          # one entry per function (CALL_PADDING kernels); grows with new functions
                          "__patchable_function_entries")


def check_headers(orig: ElfObject, patched: ElfObject) -> None:
    fields = ("e_type", "e_machine", "e_flags", "ei_osabi", "ei_abiversion")
    for name in fields:
        a, b = getattr(orig, name), getattr(patched, name)
        if a != b:
            raise PatchRejected("ELF headers differ between %s and %s: %s is %#x vs %#x (were both built with "
                                "the same compiler and flags?)" % (orig.path, patched.path, name, a, b))


def check_init_changes(patched: ElfObject) -> None:
    """A real change to ``__init``/``__exit`` code is refused: it ran at boot (or runs at unload) and
    the patch cannot give it effect.  Changes that are only side effects of the patch never get here:
    moved offsets into ``.altinstr_aux`` compare equal, and KPATCH_IGNORE_SECTION marks a section's
    functions unchanged (``compare.py``)."""
    for sym in patched.symbols[1:]:
        if sym.type != STT_FUNC or sym.status != Status.CHANGED or sym.section is None:
            continue
        if sym.section.name.startswith((".init.text", ".init.", ".exit.text")):
            raise PatchRejected("function %s in %s changed: __init/__exit code runs only at boot or unload and "
                                "cannot be live patched" % (sym.name, sym.section.name))


def _is_checked_data(sec: Section) -> bool:
    if not sec.flags & SHF_ALLOC or sec.flags & SHF_EXECINSTR or sec.is_rela:
        return False
    if sec.name in special_section_names() or sec.name.startswith(_IGNORED_DATA_PREFIXES) or is_call_site_data(sec):
        return False
    if sec.sym is not None and is_special_static(sec.sym):
        return False
    return bool(sec.flags & SHF_WRITE) or sec.sh_type == SHT_NOBITS


def check_data_changes(patched: ElfObject) -> None:
    """Existing variables must keep their initial value; new ones need their own section."""
    for sym in patched.symbols[1:]:
        if sym.type != STT_OBJECT or sym.status != Status.NEW or sym.section is None:
            continue
        sec = sym.section
        if sec.twin is not None and _is_checked_data(sec) and sec.sym is not sym and not is_special_static(sym):
            raise PatchRejected("new variable %s was added to the existing data section %s: build with "
                                "-fdata-sections or use a shadow variable" % (sym.name, sec.name))
    for sec in patched.sections:
        if not _is_checked_data(sec):
            continue
        if sec.status == Status.CHANGED:
            what = "variable %s" % sec.sym.name if sec.sym is not None else "its contents"
            raise PatchRejected("data section %s changed (%s): the running kernel keeps the old data, so "
                                "changed initial values or layouts cannot be live patched (use a shadow "
                                "variable or a patch callback)" % (sec.name, what))


def check_no_existing_data_copied(patched: ElfObject) -> None:
    """Included code must not get a private copy of variables the running kernel already has.

    A reference that names a whole data section (no symbol covers the offset)
    would pull that section into the module: the patched code would then work
    on a copy while the rest of the kernel keeps using the original.
    """
    for sec in patched.sections:
        if sec.include and sec.twin is not None and _is_checked_data(sec) and sec.status == Status.SAME:
            what = "variable %s" % sec.sym.name if sec.sym is not None else "anonymous data"
            raise PatchRejected("included code references %s in the existing data section %s through a section "
                                "symbol; the module would get its own copy of that data instead of using the "
                                "kernel's" % (what, sec.name))


def has_fentry_call(sym: Symbol) -> bool:
    sec = sym.section
    if sec is None or sec.rela is None:
        return False
    start = sym.value
    return any(r.sym.name == FENTRY and start <= r.offset < start + FENTRY_WINDOW for r in sec.rela.relocations)


def check_fentry(changed: Iterable[Symbol]) -> None:
    for sym in changed:
        if sym.section is not None and sym.section.sym is not sym:
            raise PatchRejected("changed function %s shares section %s with other code: build with "
                                "-ffunction-sections so each function can be replaced on its own"
                                % (sym.name, sym.section.name))
        sym.has_func_profiling = has_fentry_call(sym)
        # ftrace hooks the running kernel's function, so the *original* must have the call; the
        # replacement is reached by livepatch's redirect and may itself be notrace.
        original = sym.twin
        if original is not None and not has_fentry_call(original):
            raise PatchRejected("function %s changed but its original has no __fentry__ call (notrace, or built "
                                "without -pg -mfentry): ftrace cannot redirect the running kernel's copy, so it "
                                "cannot be patched" % sym.name)


# Sections the engine never carries into the output, yet whose change matters to the running
# kernel: module parameters (struct kernel_param: name, ops, perm), export tables, init data.
# A change there would silently ship without that part, so it is refused by name.
_UNCARRIED_PREFIXES = ("__param", "___ksymtab", "__ksymtab", ".init.")


def check_uncarried_changes(patched: ElfObject) -> None:
    """Refuse changes to ``__param``, ``___ksymtab*``/``__ksymtab*`` and ``.init.*`` data sections:
    none of them can be changed in a running kernel, and leaving them out would drop part of the patch."""
    for sec in patched.sections:
        if sec.is_rela or sec.twin is None or sec.status != Status.CHANGED:
            continue
        if not sec.flags & SHF_ALLOC or sec.flags & SHF_EXECINSTR:
            continue
        if sec.name.startswith(_UNCARRIED_PREFIXES):
            raise PatchRejected("section %s changed: module parameters, export tables and __init data are "
                                "set up at boot or module load and the running kernel never rereads them, so "
                                "this part of the patch cannot be live patched" % sec.name)


def _group_member_names(sec: Section) -> List[str]:
    return [m.name for m in sec.group_members]


def check_groups(patched: ElfObject) -> None:
    for sec in patched.sections:
        if sec.sh_type == SHT_GROUP and sec.twin is not None:
            if _group_member_names(sec) != _group_member_names(sec.twin) or sec.group_flags != sec.twin.group_flags:
                signature = sec.signature.name if sec.signature is not None else "?"
                raise PatchRejected("section group %s (signature %s) changed: members %s became %s; grouped "
                                    "(COMDAT) sections cannot be live patched"
                                    % (sec.name, signature, _group_member_names(sec.twin), _group_member_names(sec)))
        elif sec.grouped and sec.status == Status.CHANGED and not sec.is_debug:
            raise PatchRejected("section %s changed but is part of a section group: grouped (COMDAT) "
                                "sections cannot be live patched" % sec.name)


def _static_local_bases(func: Symbol) -> Set[str]:
    return {strip_number(r.sym.name) for r in family_relocations(func)
            if is_static_local(r.sym) and not is_special_static(r.sym)}


def check_static_local_references(patched: ElfObject) -> None:
    """A changed function (with its children) must keep referencing the static locals it used to."""
    for sym in patched.symbols[1:]:
        if sym.type != STT_FUNC or sym.status != Status.CHANGED or sym.twin is None or sym.parent is not None:
            continue
        if sym.section is None or sym.twin.section is None or sym.section.sym is not sym:
            continue
        removed = _static_local_bases(sym.twin) - _static_local_bases(sym)
        if removed:
            raise PatchRejected("function %s no longer references static local variable(s) %s: the patched "
                                "code could not share their state with the running kernel; keep a reference "
                                "(see the patch author guide)" % (sym.name, ", ".join(sorted(removed))))


def _target_window(reloc: Relocation, in_text: bool) -> tuple:
    # A PC-relative field in code is followed by 0-4 more bytes of its instruction.
    if in_text and reloc.type in (R_X86_64_PC32, R_X86_64_PLT32):
        return reloc.addend + 4, reloc.addend + 8
    return reloc.addend, reloc.addend


def check_relocation_ranges(sections: Iterable[Section]) -> None:
    """Every included relocation must sit inside its section and point inside its target.

    Run before the output is assembled, while referenced symbols still carry their size.
    """
    for sec in sections:
        if not sec.is_rela or sec.base is None or sec.base.is_debug or not sec.base.include:
            continue
        base = sec.base
        for reloc in sec.relocations:
            if reloc.offset < 0 or reloc.offset + relocation_width(reloc.type) > base.size:
                raise PatchRejected("relocation at %s+%#x (type %d) lies outside the section (%d bytes)"
                                    % (base.name, reloc.offset, reloc.type, base.size))
            target = reloc.sym
            if target.type == STT_SECTION and target.section is not None:
                name, size = target.section.name, target.section.size
            elif target.type in (STT_FUNC, STT_OBJECT) and target.section is not None and target.size:
                name, size = target.name, target.size
            else:
                continue
            low, high = _target_window(reloc, base.is_text)
            # Below a named symbol is fine: gcc addresses arrays as ``table - 8 + 8 * i`` for
            # 1-based loops (sysrq_key_table-8 in __handle_sysrq); only past-the-end is wrong.
            below_ok = target.type != STT_SECTION
            if (high < 0 and not below_ok) or low > size:
                raise PatchRejected("relocation at %s+%#x points to %s%+#x, outside that %s (%d bytes)"
                                    % (base.name, reloc.offset, name, reloc.addend,
                                       "section" if target.type == STT_SECTION else "symbol", size))


def check_keys(keys: Iterable[KeptKey], klp_objects: Dict[int, str]) -> None:
    """Reject jump labels/static calls whose key would need a klp relocation into a module.

    ``klp_objects`` maps id(symbol) → objname for every symbol resolved through a
    livepatch relocation.  Module keys are resolved too late (after the jump label
    and static call tables of the patch module are processed).
    """
    offending: Dict[tuple, List[str]] = {}
    for kept in keys:
        objname = klp_objects.get(id(kept.key))
        if objname is not None and objname != "vmlinux":
            names = offending.setdefault((kept.section, kept.function, objname), [])
            if kept.key.name not in names:
                names.append(kept.key.name)
    if not offending:
        return
    (section, function, objname), names = next(iter(offending.items()))
    kind = "jump label" if section == "__jump_table" else "static call"
    others = sorted({f for (_s, f, _o) in offending} - {function})
    more = names[1:] + ["%s()" % f for f in others]
    raise PatchRejected("%s in function %s uses key %s defined in module %s%s: keys in modules cannot be "
                        "resolved before the patch module's %s is processed; use static_key_enabled() / a "
                        "plain call instead"
                        % (kind, function, names[0], objname, " (also: %s)" % ", ".join(more) if more else "",
                           section))
