{
  "targets": [
    {
      "target_name": "npmu_native",
      "sources": [
        "native/addon.cc",
        "native/connection_request.cc",
        "native/context.cc",
        "native/endpoint.cc",
        "native/fanout.cc",
        "native/listener.cc",
        "native/mapping.cc",
        "native/mr.cc",
        "native/pd.cc",
        "native/work_request.cc",
        "native/util/args.cc",
        "native/util/errors.cc",
        "native/util/uv_handle.cc"
      ],
      "include_dirs": [
        "native",
        "<!@(node -p \"require('node-addon-api').include\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++14", "-std=gnu++17"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"],
      "libraries": ["-libverbs", "-lrdmacm", "-lpmem"]
    }
  ]
}
