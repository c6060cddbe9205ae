import { Routes } from '@angular/router';

import { authGuard } from './auth.guard';
import { HomePage } from './home.page';
import { ProductsPage } from './products.page';

export const routes: Routes = [
  { path: '', component: HomePage },
  { path: 'products', component: ProductsPage, canActivate: [authGuard] },
  { path: '**', redirectTo: '' },
];
