# pxd as a privileged container. Build: docker build -t pxd .
# Run (see README "Running pxd in a container"):
#   docker run -d --name pxd --privileged --network host \
#     -v /dev:/dev -v /run/docker/plugins:/run/docker/plugins \
#     -v /var/lib/pxd:/var/lib/pxd -v /run/pxd:/run/pxd:rshared pxd

FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY binding.gyp tsconfig.json ./
COPY native ./native
RUN npx node-gyp rebuild
COPY src ./src
COPY test ./test
COPY bench ./bench
RUN npx tsc -p tsconfig.json && npm prune --omit=dev --no-audit --no-fund

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
ENTRYPOINT ["node", "/opt/pxd/bin/pxd"]
