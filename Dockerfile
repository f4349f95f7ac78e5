# pxd as a privileged container (README, "Running pxd in a container", says why each flag):
#   docker build -t pxd .
#   docker run -d --name pxd --privileged --network host \
#     -v /dev:/dev -v /run/docker/plugins:/run/docker/plugins \
#     -v /var/lib/pxd:/var/lib/pxd -v /run/pxd:/run/pxd:rshared pxd [pxd flags]
# Instead of --privileged, exactly what pxd needs: mount(2), /dev/fuse, /dev/loop-control and
# the loop devices (and --security-opt apparmor=unconfined where AppArmor is on):
#     --cap-add SYS_ADMIN --device-cgroup-rule 'c 10:229 rwm' --device-cgroup-rule 'c 10:237 rwm' --device-cgroup-rule 'b 7:* rwm'
# The build context is only what .dockerignore lets through (an allow-list);
# test/integration/dockerfile.test.ts checks that it holds everything COPY names.

# Build: npm dependencies, the C++ addon, the TypeScript (src/ only: no tests, no bench).
# node:20-bookworm has python3, make and g++ for node-gyp, and Node's headers under
# /usr/local, which --nodedir points node-gyp at instead of downloading them.
FROM node:20-bookworm AS build
# xxhash.h for the addon's block hashes (compiled in: nothing of it is needed at run time).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libxxhash-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY binding.gyp ./
COPY native ./native
RUN npx --no-install node-gyp rebuild --nodedir=/usr/local
COPY tsconfig.json ./
COPY src ./src
RUN npx --no-install tsc -p tsconfig.json && npm prune --omit=dev --no-audit --no-fund

# Run: Node, pxd, and the tools pxd runs: libfuse.so.2 (libfuse2) for fuse-native,
# fusermount (fuse) for operators who clean up by hand, mkfs.ext4 (e2fsprogs), mkfs.xfs (xfsprogs), blkid (util-linux),
# losetup, mount, umount (mount).
FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libfuse2 fuse e2fsprogs xfsprogs util-linux mount \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/pxd
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/build/Release/pxd_native.node ./build/Release/pxd_native.node
COPY --from=build /src/dist/src ./dist/src
COPY bin ./bin
ENV PATH=/opt/pxd/bin:$PATH
VOLUME ["/var/lib/pxd"]
ENTRYPOINT ["node", "--initial-old-space-size=128", "/opt/pxd/bin/pxd"]
