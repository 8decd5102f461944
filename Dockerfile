# The image the berth DaemonSet (charts/berth) runs: berth's static binaries and its installer,
# nothing else. Build it with `deploy/build.sh image`, which stages the build context (bin/, etc/)
# from the static release build; it needs no base image and no registry.
FROM scratch
LABEL org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="Berth container runtime and its node installer" \
      org.opencontainers.image.licenses="Apache-2.0"
# bin/: berthd berth-shim berthctl berth-pause berth-install (statically linked)
COPY bin/ /berth/bin/
# etc/: berthd's commented default config.toml and berth's bridge CNI conflist, for reference (the
# installer carries its own copy of the conflist and writes config.toml from the chart's values)
COPY etc/ /berth/etc/
ENTRYPOINT ["/berth/bin/berth-install"]
CMD ["install", "--wait"]
