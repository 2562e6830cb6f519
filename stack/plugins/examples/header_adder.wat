;; The header adder by hand: `x-plugin: bench` on the request and
;; `x-served-through: ferrogate-wasm` on the response, one host call each.
;; What a plugin costs the host itself (wasmtime's calls, the ABI, the
;; header lists) without an SDK's own work: examples/per_request.rs and the
;; bench's `plugins` scenario run it beside the AssemblyScript filter.
(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 4096))
  (data (i32.const 256) "x-plugin")
  (data (i32.const 272) "bench")
  (data (i32.const 288) "x-served-through")
  (data (i32.const 320) "ferrogate-wasm")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 256) (i32.const 8) (i32.const 272) (i32.const 5)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 288) (i32.const 16) (i32.const 320) (i32.const 14)))
    (i32.const 0)))
