"""The KubeArmor policy language, apart from the kernel: what a policy says and which rules it makes.

- `model`: the typed, frozen policy values (Policy, its matches and selector), path normalisation;
- `yaml_loader`: policy text -> policies (bounded YAML loading, duplicate names);
- `nodes`: typed access to YAML nodes with one problem per finding; `reader`: one KubeArmor document;
- `files`: policy files and directories -> policies;
- `glob`: matchPatterns (AppArmor globs): parsing, a reference matcher, compilation into byte automata;
- `compiler`: the policies that select a scope -> its RuleSet; `ruleset`: the canonical, measured rule table;
- `limits`: what the engine can hold, refused here so the kernel side never truncates.

Imports nothing from bpf.kernel: the language is parsed, compiled and measured without a kernel.
"""
