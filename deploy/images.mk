# Container images with buildah (or any builder that reads a Dockerfile); included from the
# top-level Makefile.
#   make image-cpu / image-gpu   build deploy/Dockerfile.<kind> as lushpo:$(IMAGE_VERSION)-<kind>
#   make image-base              a Debian stand-in for rayproject/ray (deploy/standin-base.sh), for
#                                tests and air-gapped builds; then IMAGE_BASE=$(STANDIN_BASE)
#   make test-image              the image test: build on the stand-in, run as pods (as root)
# IMAGE_BASE empty builds FROM the official Ray image (the Dockerfiles' default); BUILD_FLAGS adds
# builder flags, e.g. a CA bundle lent to the build behind a TLS-intercepting proxy:
#   BUILD_FLAGS='-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
#                -v $(PWD)/pip.conf:/etc/pip.conf:ro'

IMAGE_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
STANDIN_BASE ?= localhost/lushpo-standin-base:bookworm
IMAGE_BASE ?=
BUILDER ?= buildah bud --isolation chroot --layers
BUILD_FLAGS ?=

.PHONY: image-base image-cpu image-gpu test-image

image-base:
	deploy/standin-base.sh $(STANDIN_BASE)

image-cpu image-gpu: image-%:
	$(BUILDER) $(if $(IMAGE_BASE),--build-arg BASE_IMAGE=$(IMAGE_BASE)) $(BUILD_FLAGS) \
		-f deploy/Dockerfile.$* -t lushpo:$(IMAGE_VERSION)-$* .

test-image: setup tools
	$(BIN)/python -m pytest -m image
