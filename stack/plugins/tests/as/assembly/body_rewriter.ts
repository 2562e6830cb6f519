// Buffers the response body and replaces "origin" with "edge" in it.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterDataStatusValues,
  FilterHeadersStatusValues, stream_context,
} from "@solo-io/proxy-runtime";
import { get_buffer_bytes, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";

// The SDK (0.1.8) has no wrapper for this ABI function.
// @ts-ignore: decorator
@external("env", "proxy_set_buffer_bytes")
declare function proxy_set_buffer_bytes(typ: i32, start: u32, length: u32, data: usize, size: usize): u32;

class BodyRewriterRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new BodyRewriter(context_id, this);
  }
}

class BodyRewriter extends Context {
  constructor(context_id: u32, root_context: BodyRewriterRoot) {
    super(context_id, root_context);
  }

  // The rewrite changes the length: as with Envoy, a filter that does so
  // removes content-length at the head (the proxy then re-frames the body).
  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.remove("content-length");
    return FilterHeadersStatusValues.Continue;
  }

  onResponseBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    let body = String.UTF8.decode(get_buffer_bytes(BufferTypeValues.HttpResponseBody, 0, body_buffer_length as u32));
    let rewritten = String.UTF8.encode(body.replaceAll("origin", "edge"));
    proxy_set_buffer_bytes(BufferTypeValues.HttpResponseBody, 0, body_buffer_length as u32,
      changetype<usize>(rewritten), rewritten.byteLength);
    return FilterDataStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new BodyRewriterRoot(context_id); }, "body_rewriter");
