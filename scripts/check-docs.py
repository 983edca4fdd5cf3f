#!/usr/bin/env python3
"""Checks README.md and docs/*.md (standard library only, no build).

(a) Every relative Markdown link [x](path), [x](path#anchor), (#anchor),
    reference definition [x]: path, and image ![x](path) or <img src>
    resolves: the file or folder exists, and an anchor
    matches a heading of the target Markdown file by GitHub's slug rules
    (lowercase; punctuation dropped except hyphens and underscores; spaces
    become hyphens; a repeated heading gets -1, -2, ...). http(s) and mailto
    links are skipped; so are links inside code.
(b) Every command shown in README.md (fenced code blocks and inline code)
    that starts with `tlab ` or `cargo run [--release] [--quiet] -- ` names a
    real subcommand, taken from `enum Command` in src/main.rs (clap's
    kebab-case names); every repository path such a command line mentions
    exists (except under runs/, target/ and out/, which a run creates); and a
    shell line in an sh/bash block that starts with a relative path
    (`.ci/test`, `scripts/notebook`) names an existing file. Subcommands are
    checked in docs/*.md too.

Prints each problem as FILE:LINE: message and exits 1 if there is any.
"""
import glob
import os
import re
import sys
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATED = ("runs/", "target/", "out/")
PATH_SUFFIXES = (".toml", ".py", ".sh", ".ipynb")
SHELL_LANGS = {"sh", "bash", "shell", "console", "text", ""}

problems = []
checked = {"commands": 0, "links": 0}


def problem(path, line, message):
    problems.append(f"{os.path.relpath(path, ROOT)}:{line}: {message}")


def fences(lines):
    """Yields (index, line, language or None) for each line; the language is
    that of the fenced block the line sits in (None outside blocks, and for
    the fence lines themselves)."""
    lang, marker = None, None
    for i, line in enumerate(lines):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if m and (marker is None or m.group(1).startswith(marker)):
            if marker is None:
                marker, lang = m.group(1), m.group(2).lower()
            else:
                marker, lang = None, None
            yield i, line, None
            continue
        yield i, line, lang if marker is not None else None


def slug(text):
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    keep = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LMN":
            keep.append(ch)
    return "".join(keep).replace(" ", "-")


_anchors = {}


def anchors(path):
    if path not in _anchors:
        seen, found = {}, set()
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for _, line, lang in fences(lines):
            if lang is not None:
                continue
            m = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        for m in re.finditer(r'<a\s+(?:name|id)="([^"]+)"', "\n".join(lines)):
            found.add(m.group(1))
        _anchors[path] = found
    return _anchors[path]


LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\s*\)")


def check_links(path, lines):
    for i, line, lang in fences(lines):
        if lang is not None:
            continue
        text = re.sub(r"(`+)(.+?)\1", lambda m: "x" * len(m.group(0)), line)  # code spans
        found = [(m.group(1), m.group(3), m.group(0)) for m in LINK.finditer(text)]
        found += [("!", m.group(1), m.group(0)) for m in re.finditer(r'<img\b[^>]*\bsrc="([^"]+)"', text)]
        found += [("", m.group(1), m.group(0)) for m in re.finditer(r"^ {0,3}\[[^\]]+\]:\s*(\S+)", text)]
        for image, target, whole in found:
            target = target.strip("<>")
            if not target:
                problem(path, i + 1, f"empty link target in {whole!r}")
                continue
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            checked["links"] += 1
            file_part, _, anchor = target.partition("#")
            dest = path if not file_part else os.path.normpath(os.path.join(os.path.dirname(path), file_part))
            shown = os.path.relpath(dest, ROOT)
            if not os.path.exists(dest):
                what = "image" if image else "link"
                problem(path, i + 1, f"{what} target {target!r} does not exist ({shown})")
                continue
            if image and not os.path.isfile(dest):
                problem(path, i + 1, f"image {target!r} is not a file")
            if anchor:
                if not dest.endswith(".md") or not os.path.isfile(dest):
                    problem(path, i + 1, f"anchor #{anchor} on {shown}, which is not a Markdown file")
                elif anchor not in anchors(dest):
                    near = sorted(a for a in anchors(dest) if anchor[:6] in a)[:3]
                    hint = f" (headings there: {', '.join('#' + a for a in near)})" if near else ""
                    problem(path, i + 1, f"no heading #{anchor} in {shown}{hint}")


def subcommands():
    src = open(os.path.join(ROOT, "src", "main.rs"), encoding="utf-8").read()
    m = re.search(r"^(?:pub\s+)?enum Command\s*\{(.*?)^\}", src, re.S | re.M)
    if not m:
        problem(os.path.join(ROOT, "src", "main.rs"), 1, "no `enum Command` found")
        return set()
    names = set()
    for v in re.finditer(r"^    ([A-Z][A-Za-z0-9]*)\b", m.group(1), re.M):
        names.add(re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", v.group(1)).lower())
    # an explicit #[command(name = "...")] wins over the derived name
    for v in re.finditer(r'#\[command\([^)]*name\s*=\s*"([^"]+)"', m.group(1)):
        names.add(v.group(1))
    return names


PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(?:…|\.\.\.)?$")


def looks_like_path(token):
    if not token or token.startswith(("-", "$", "~", "/", "<", "{")) or "://" in token:
        return False
    if re.match(r"^[a-z][a-z0-9+.-]*:", token, re.I):  # hf:ORG/REPO, https:
        return False
    if any(c in token for c in "=()'\"`"):
        return False
    return "/" in token or token.endswith(PATH_SUFFIXES)


def is_placeholder(token):
    parts = [p for p in re.split(r"[/]", token) if p]
    return any(PLACEHOLDER.match(p) or re.search(r"<[^>]*>", p) for p in parts)


def check_paths(path, lineno, tokens):
    for raw in tokens:
        token = raw.strip("[](),;").rstrip("…")
        if not looks_like_path(token) or is_placeholder(token):
            continue
        norm = os.path.normpath(token)
        if (norm + "/").startswith(GENERATED) or norm in ("runs", "target", "out"):
            continue
        if not glob.glob(os.path.join(ROOT, norm)):
            problem(path, lineno, f"command mentions {token!r}, which is not in the repository")


COMMAND = re.compile(r"^(?:\$\s+)?(?:tlab|cargo\s+run(?:\s+--(?:release|quiet))*\s+--)\s+(.*)$")


def check_command(path, lineno, text, subs, paths):
    text = text.replace("\\|", "|").strip()
    text = re.sub(r"\s+#.*$", "", text)  # a trailing shell comment
    m = COMMAND.match(text)
    if not m:
        return False
    checked["commands"] += 1
    rest = m.group(1).split()
    if not rest:
        problem(path, lineno, f"`{text}`: no subcommand")
        return True
    sub = rest[0]
    if sub in ("--help", "-h", "--version", "-V", "help"):
        return True
    if sub not in subs:
        problem(path, lineno, f"`{text}`: `{sub}` is not a tlab subcommand ({', '.join(sorted(subs))})")
    if paths:
        check_paths(path, lineno, rest[1:])
    return True


def check_commands(path, lines, subs, paths):
    for i, line, lang in fences(lines):
        if lang is None:
            for span in re.finditer(r"(`+)(.+?)\1", line):
                check_command(path, i + 1, span.group(2), subs, paths)
        elif lang in SHELL_LANGS:
            stripped = line.strip()
            if check_command(path, i + 1, stripped, subs, paths) or not paths:
                continue
            if lang in ("sh", "bash", "shell"):
                first = re.sub(r"\s+#.*$", "", stripped).split()
                # a program run by its relative path: .ci/test, scripts/notebook
                if first and "=" not in first[0] and looks_like_path(first[0]):
                    check_paths(path, i + 1, first[:1])


def main():
    subs = subcommands()
    files = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    for path in files:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        check_links(path, lines)
        check_commands(path, lines, subs, paths=os.path.dirname(path) == ROOT)
    for p in problems:
        print(p)
    if problems:
        sys.stdout.flush()
        print(f"check-docs: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check-docs: {len(files)} files, {checked['links']} relative links and "
          f"{checked['commands']} tlab command lines ({len(subs)} subcommands) resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
