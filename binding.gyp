{
  "targets": [
    {
      "target_name": "pxd_native",
      "sources": [
        "native/addon.cc",
        "native/store_binding.cc",
        "native/store_io_binding.cc",
        "native/block_store.cc",
        "native/block_open.cc",
        "native/block_hashes.cc",
        "native/block_discard.cc",
        "native/block_layers.cc",
        "native/block_merge.cc",
        "native/layer_binding.cc",
        "native/intent_map.cc",
        "native/store_io.cc",
        "native/direct_io.cc",
        "native/crc32c.cc",
        "native/fuse_server.cc",
        "native/fuse_fallocate.cc",
        "native/fuse_directory.cc",
        "native/fuse_session.cc",
        "native/fuse_binding.cc",
        "native/fuse_session_binding.cc",
        "native/share_server.cc",
        "native/share_server_wire.cc",
        "native/share_server_ops.cc",
        "native/share_server_names.cc",
        "native/share_server_io.cc",
        "native/share_server_tables.cc",
        "native/share_server_binding.cc",
        "native/share_client.cc",
        "native/share_client_wire.cc",
        "native/share_client_handoff.cc",
        "native/share_client_binding.cc",
        "native/unix_datagram.cc",
        "native/xts.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O3", "-Wall", "-Wextra"],
      "cflags": ["-O3"]
    }
  ]
}
