// Adds a request header (its value: the plugin configuration) and a
// response header.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
} from "@solo-io/proxy-runtime";

class HeaderAdderRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new HeaderAdder(context_id, this);
  }
}

class HeaderAdder extends Context {
  constructor(context_id: u32, root_context: HeaderAdderRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    // The plugin configuration (from the proxy's config) is the value.
    stream_context.headers.request.add("x-plugin", (this.root_context as HeaderAdderRoot).getConfiguration());
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-served-through", "ferrogate-wasm");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new HeaderAdderRoot(context_id); }, "header_adder");
