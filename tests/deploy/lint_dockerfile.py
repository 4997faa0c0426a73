"""Lints a Dockerfile with dockerfile-parse (PyPI; hadolint is not in the registries here).

The rules are hadolint's that matter for this image, plus ours: every FROM pins a tag (not
latest), the final stage runs as a non-root numeric user, has a HEALTHCHECK and an exec-form
ENTRYPOINT, every COPY --from names an earlier stage, no ADD of URLs, apt-get installs use
--no-install-recommends and clean their lists. Prints one line per problem; exits 1 if any.
"""

import io
import json
import sys

from dockerfile_parse import DockerfileParser


def lint(path):
    with open(path, "rb") as f:
        parser = DockerfileParser(fileobj=io.BytesIO(f.read()))
    problems = []
    stages = []
    final = []
    for ins in parser.structure:
        name, value, line = ins["instruction"], ins["value"], ins["startline"] + 1
        if name == "FROM":
            words = value.split()
            image = words[0]
            if ":" not in image.split("/")[-1] or image.endswith(":latest"):
                problems.append(f"{path}:{line}: FROM {image}: pin a tag other than latest")
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.append(words[2])
            final = []
        final.append((name, value, line))
        if name == "COPY" and value.startswith("--from="):
            source = value.split()[0][len("--from="):]
            if source not in stages:
                problems.append(f"{path}:{line}: COPY --from={source}: no such earlier stage")
        if name == "ADD" and "://" in value:
            problems.append(f"{path}:{line}: ADD of a URL: fetch in a RUN step, checked")
        if name == "RUN" and "apt-get install" in value:
            if "--no-install-recommends" not in value:
                problems.append(f"{path}:{line}: apt-get install without --no-install-recommends")
            if "rm -rf /var/lib/apt/lists" not in value:
                problems.append(f"{path}:{line}: apt-get lists not removed in the same step")
    names = [n for n, _, _ in final]
    users = [v for n, v, _ in final if n == "USER"]
    if not users:
        problems.append(f"{path}: the final stage sets no USER (it would run as root)")
    elif users[-1].split(":")[0] in ("0", "root") or not users[-1].split(":")[0].isdigit():
        problems.append(f"{path}: USER {users[-1]}: use a numeric non-root user")
    if "HEALTHCHECK" not in names:
        problems.append(f"{path}: the final stage has no HEALTHCHECK")
    entry = [v for n, v, _ in final if n == "ENTRYPOINT"]
    if not entry:
        problems.append(f"{path}: the final stage has no ENTRYPOINT")
    else:
        try:
            json.loads(entry[-1])
        except ValueError:
            problems.append(f"{path}: ENTRYPOINT in shell form: signals would not reach pgsluice")
    return problems, parser


def main():
    path = sys.argv[1]
    problems, parser = lint(path)
    for p in problems:
        print(p)
    if not problems:
        print(f"{path}: ok ({len(parser.structure)} instructions, base {parser.baseimage})")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
