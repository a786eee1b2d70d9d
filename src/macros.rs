//! Crate-private macros.

/// Defines a middleware's named response future over a boxed future: the work is I/O anyway, and a named type
/// lets users write the service's `Future` (hyper-util's legacy client does the same).
macro_rules! boxed_response_future {
    ($(#[$meta:meta])* $name:ident<$r:ident> => $output:ty) => {
        $(#[$meta])*
        pub struct $name<$r> {
            inner: ::std::pin::Pin<
                Box<dyn ::std::future::Future<Output = $output> + Send>,
            >,
        }

        impl<$r> $name<$r> {
            pub(crate) fn new(
                inner: ::std::pin::Pin<
                    Box<dyn ::std::future::Future<Output = $output> + Send>,
                >,
            ) -> Self {
                $name { inner }
            }
        }

        impl<$r> ::std::fmt::Debug for $name<$r> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl<$r> ::std::future::Future for $name<$r> {
            type Output = $output;

            fn poll(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Self::Output> {
                self.inner.as_mut().poll(cx)
            }
        }
    };
}

pub(crate) use boxed_response_future;
